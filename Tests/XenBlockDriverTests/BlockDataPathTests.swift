import Foundation
import Testing
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenSimulator

@Suite(.serialized)
struct BlockDataPathTests {
    @Test func randomReadsAndWritesMatchAShadowCopyOnMemory() async throws {
        let bytes = 8 << 20
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 256)) { _ in
            try MemoryStorage(byteCount: bytes, alignment: 512)
        }
        try f.start()
        try await withTimeout(30) { try await shadowWorkout(f.frontend, deviceBytes: bytes, operations: 40) }
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}
