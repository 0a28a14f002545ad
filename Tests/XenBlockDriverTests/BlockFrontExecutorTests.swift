import Foundation
import TestSupport
import Testing
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage

@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockFrontExecutorTests {
    /// Tasks that prefer the device's executor run on its queue thread, with or without
    /// a connection, and get their own data.
    @Test func tasksRunOnTheQueueThreadWhileOneRunsAndElsewhereOtherwise() async throws {
        let bytes = 4 << 20
        let f = try BlockFixture.inMemory(bytes: bytes)
        let fe = f.frontend
        // Before attach: the preference cannot be honoured, the task runs anyway.
        let early = await Task(executorPreference: fe.executor) { currentThreadName() }.value
        #expect(!early.hasPrefix("blkfront"))

        try f.start()
        try await withTimeout(30) {
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<64 {
                    group.addTask(executorPreference: fe.executor) {
                        let size = (i % 8 + 1) * 4096
                        let data = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: size)
                        try await fe.write(at: UInt64(i) << 16, data)
                        let back = try await fe.read(at: UInt64(i) << 16, count: size)
                        if back != data { throw ShadowMismatch(offset: i << 16, length: size) }
                        return currentThreadName()
                    }
                }
                for try await name in group { #expect(name.hasPrefix("blkfront"), "ran on \(name)") }
            }
        }
        fe.detach()
        let late = await Task(executorPreference: fe.executor) { currentThreadName() }.value
        #expect(!late.hasPrefix("blkfront"))
        #expect(try f.teardown().isEmpty)
    }
}

