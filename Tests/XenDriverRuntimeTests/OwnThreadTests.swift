import Foundation
import Testing
import XenLocks

/// `onOwnThread`: blocking work off the cooperative pool, its result or error handed back.
@Suite(.timeLimit(.minutes(2)))
struct OwnThreadTests {
    struct Refused: Error, Equatable {}

    @Test func theResultOrErrorReachesTheTaskFromANamedThread() async throws {
        let name = await onOwnThread(named: "own-thread-test") {
            (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(name == "own-thread-test")
        #expect(await onOwnThread(named: "t") { 6 * 7 } == 42)
        await #expect(throws: Refused.self) { try await onOwnThread(named: "t") { () throws -> Int in throw Refused() } }
    }

    /// Sixteen calls that each block until all sixteen are blocked: on the cooperative
    /// pool (a thread per core) they could never all be waiting at once.
    @Test func moreBlockedCallsThanCoresAllGoOn() async {
        let count = 16
        let arrived = Locked(0)
        let all = DispatchSemaphore(value: 0)
        let met = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<count {
                group.addTask {
                    await onOwnThread(named: "barrier") {
                        if arrived.withLock({ $0 += 1; return $0 }) == count {
                            for _ in 0..<count { all.signal() }
                        }
                        // Bounded: a stalled pool fails the test instead of hanging it.
                        return all.wait(timeout: .now() + 30) == .success
                    }
                }
            }
            var met = 0
            for await ok in group where ok { met += 1 }
            return met
        }
        #expect(met == count)
    }
}
