import Foundation
import Synchronization
import Testing
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenSimulator

@Suite(.timeLimit(.minutes(2)))
struct BlockReconnectTests {
    /// Writers stream writes while the backend is stopped and started again on fresh
    /// rings (a backend restart); every acknowledged write must be on disk afterwards,
    /// and the callers whose requests were in flight just wait and complete.
    @Test func noAcknowledgedWriteIsLostAcrossABackendRestart() async throws {
        let bytes = 4 << 20
        let image = try TempImage(bytes: bytes)
        let f = try BlockFixture(queues: 2, limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 64)) { _ in
            try image.storage()
        }
        try f.start()
        let fe = f.frontend
        let acknowledged = Acknowledged()  // 64 KiB block -> fill byte
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for t in 0..<4 {
                    // Half of them on the queue thread, which stops and is replaced under them.
                    group.addTask(executorPreference: t % 2 == 0 ? fe.executor : nil) {
                        for round in 0..<12 {
                            let block = t * 16 + round
                            let fill = UInt8(truncatingIfNeeded: block &* 3 &+ 1)
                            try await fe.write(at: UInt64(block << 16), [UInt8](repeating: fill, count: 1 << 16))
                            acknowledged.map.withLock { $0[block] = fill }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        // Let some writes through, then restart the backend under them.
        // At least one write through before the restart (slow when the whole package tests in parallel).
        #expect(await eventuallyAsync(seconds: 30) { acknowledged.map.withLock { $0.count } >= 1 })
        try f.stopBackend()
        #expect(f.frontend.detach(timeout: 10))
        for r in f.resources { #expect(r.release(sharer: f.sharer)) }
        f.resources = []
        let before = acknowledged.map.withLock { $0.count }
        try f.shareAndMap()
        try f.startBackend()
        try f.frontend.attach(f.resources, info: f.info)
        try await withTimeout(30) { try await writers.value }
        #expect(before < 48)
        let written = acknowledged.map.withLock { $0 }
        #expect(written.count == 48)
        try await withTimeout(20) {
            for (block, fill) in written {
                let back = try await fe.read(at: UInt64(block << 16), count: 1 << 16)
                #expect(back.allSatisfy { $0 == fill }, "block \(block)")
            }
        }
        #expect(try f.teardown().isEmpty)
    }
}

final class Acknowledged: Sendable {
    let map = Mutex<[Int: UInt8]>([:])
}
