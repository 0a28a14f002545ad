import Foundation
import TestSupport
import Testing
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenLocks

@Suite(.timeLimit(.minutes(5)), .serialized)
struct LentThreadTests {
    /// A thread lent to the executor runs a task it starts itself while the queue thread
    /// sleeps, issues its requests and collects their answers: every request gets its own
    /// data back, and (once the queue thread was found asleep) one ran wholly on the lent
    /// thread. Tasks started elsewhere still run on the queue thread.
    @Test func aLentThreadWorksTheRingWhileTheQueueThreadSleeps() async throws {
        let bytes = 4 << 20
        let f = try BlockFixture.inMemory(bytes: bytes)
        let fe = f.frontend
        try f.start()
        let outcome = try await withTimeout(180) {
            try await onOwnThread(named: "lender") { () throws -> (requests: Int, lent: Int) in
                var requests = 0, lent = 0
                let deadline = Date().addingTimeInterval(150)
                // Each round waits a little longer first, so the queue thread is asleep
                // when the request starts (its spin before sleeping is bounded).
                while lent == 0 || requests < 64, Date() < deadline {
                    usleep(UInt32(min(20_000, 100 * (requests + 1))))
                    let i = requests
                    let done = DispatchSemaphore(value: 0)
                    let result = Locked<Result<String, any Error>?>(nil)
                    _ = fe.executor.lendingThisThread {
                        Task(executorPreference: fe.executor) {
                            let size = (i % 8 + 1) * 4096
                            let data = [UInt8](repeating: UInt8(truncatingIfNeeded: i &* 7 &+ 1), count: size)
                            do {
                                try await fe.write(at: UInt64(i % 64) << 16, data)
                                let back = try await fe.read(at: UInt64(i % 64) << 16, count: size)
                                if back != data { throw ShadowMismatch(offset: (i % 64) << 16, length: size) }
                                result.withLock { $0 = .success(currentThreadName()) }
                            } catch {
                                result.withLock { $0 = .failure(error) }
                            }
                            done.signal()
                        }
                    }
                    guard done.wait(timeout: .now() + 60) == .success else { throw LenderTimedOut() }
                    let name = try result.withLock { $0 }!.get()
                    if name == "lender" { lent += 1 } else { #expect(name.hasPrefix("blkfront"), "ran on \(name)") }
                    requests += 1
                }
                return (requests, lent)
            }
        }
        #expect(outcome.lent > 0, "no request of \(outcome.requests) ran on the lent thread")
        // A task started on a thread that is not lent still runs on the queue thread.
        let name = await Task(executorPreference: fe.executor) { currentThreadName() }.value
        #expect(name.hasPrefix("blkfront"))
        fe.detach()
        #expect(try f.teardown().isEmpty)
    }
}

private struct LenderTimedOut: Error {}

