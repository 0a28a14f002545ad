import Foundation
import TestSupport
import Testing
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenLocks

/// `startRead` and `startWrite`: the same I/O as the `async` calls, answered by a callback.
@Suite(.timeLimit(.minutes(5)))
struct BlockCallbackTests {
    /// Outcomes of callbacks, each callback counted (it must run exactly once).
    final class Outcomes: Sendable {
        let results = Locked<[Int: BlockFrontError?]>([:])
        let calls = Locked(0)

        func record(_ key: Int) -> @Sendable (BlockFrontError?) -> Void {
            { error in
                self.calls.withLock { $0 += 1 }
                self.results.withLock { $0[key] = error }
            }
        }

        func waitFor(_ count: Int) async throws {
            try await withTimeout(30) {
                while self.calls.withLock({ $0 }) < count { try await Task.sleep(for: .milliseconds(1)) }
            }
        }
    }

    private func fixture(bytes: Int, readOnly: Bool = false) throws -> BlockFixture {
        try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), readOnly: readOnly, maxIndirectSegments: 32)) { _ in
            try MemoryStorage(byteCount: bytes, alignment: 512)
        }
    }

    /// 64 writes in flight at once, then 64 reads of them in flight at once, from a plain
    /// thread: every callback runs once, without an error, and the data reads back.
    @Test func manyWritesAndReadsInFlightAnsweredByCallbacks() async throws {
        let bytes = 4 << 20
        let f = try fixture(bytes: bytes)
        try f.start()
        let count = 64, size = 16 << 10
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: count * size, alignment: 4096)
        let sink = UnsafeMutableRawBufferPointer.allocate(byteCount: count * size, alignment: 4096)
        defer {
            source.deallocate()
            sink.deallocate()
        }
        for i in 0..<source.count { source[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 14) }
        sink.initializeMemory(as: UInt8.self, repeating: 0)

        let writes = Outcomes()
        for i in 0..<count {
            f.frontend.startWrite(at: UInt64(i * size * 3), from: UnsafeRawBufferPointer(rebasing: source[(i * size)..<((i + 1) * size)]),
                                  done: writes.record(i))
        }
        try await writes.waitFor(count)
        let reads = Outcomes()
        for i in 0..<count {
            f.frontend.startRead(at: UInt64(i * size * 3), into: UnsafeMutableRawBufferPointer(rebasing: sink[(i * size)..<((i + 1) * size)]),
                                 done: reads.record(i))
        }
        try await reads.waitFor(count)
        // No callback runs twice: the counts stay where they are.
        try await Task.sleep(for: .milliseconds(20))
        #expect(writes.calls.withLock { $0 } == count)
        #expect(reads.calls.withLock { $0 } == count)
        #expect(writes.results.withLock { $0.values.allSatisfy { $0 == nil } })
        #expect(reads.results.withLock { $0.values.allSatisfy { $0 == nil } })
        #expect(memcmp(source.baseAddress!, sink.baseAddress!, source.count) == 0)
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// A call the device refuses at once is answered before `start…` returns, on the
    /// caller's thread, with the error the `async` call throws.
    @Test func refusedCallsAreAnsweredAtOnce() async throws {
        let bytes = 1 << 20
        let f = try fixture(bytes: bytes, readOnly: true)
        try f.start()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buffer.deallocate() }
        let outcomes = Outcomes()
        f.frontend.startRead(at: 100, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<512]), done: outcomes.record(0))
        f.frontend.startRead(at: UInt64(bytes), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<4096]), done: outcomes.record(1))
        f.frontend.startWrite(at: 0, from: UnsafeRawBufferPointer(rebasing: buffer[0..<4096]), done: outcomes.record(2))
        // Nothing to move: answered at once without an error.
        f.frontend.startRead(at: 0, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<0]), done: outcomes.record(3))
        #expect(outcomes.calls.withLock { $0 } == 4)
        let results = outcomes.results.withLock { $0 }
        #expect(results[0]??.code == .misaligned)
        #expect(results[1]??.code == .outOfRange)
        #expect(results[2]??.code == .readOnly)
        #expect(results[3] == .some(nil))
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// Calls waiting when the device is shut down are answered with `.closed`, once.
    @Test func waitingCallsFailOnShutdown() async throws {
        let f = try fixture(bytes: 1 << 20)
        // Not started: nothing is issued, so the calls wait in the device's queue.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        let outcomes = Outcomes()
        for i in 0..<4 { f.frontend.startRead(at: UInt64(i) * 4096, into: buffer, done: outcomes.record(i)) }
        #expect(outcomes.calls.withLock { $0 } == 0)
        f.frontend.shutdown()
        try await outcomes.waitFor(4)
        #expect(outcomes.results.withLock { $0.values.allSatisfy { $0?.code == .closed } })
        f.frontend.startRead(at: 0, into: buffer, done: outcomes.record(9))
        #expect(outcomes.results.withLock { $0[9]??.code } == .closed)
        #expect(outcomes.calls.withLock { $0 } == 5)
    }
}
