import CXen
import Testing
import XenABI
@testable import XenBlockFront
import XenBlockProtocol

@Suite(.timeLimit(.minutes(5)))
struct BlockFrontEncodingTests {
    /// The allocation-free indirect slot is byte for byte what the protocol's encoder writes.
    @Test(arguments: [BlkifOperation.read, .write])
    func theIndirectSlotMatchesTheProtocolEncoder(_ op: BlkifOperation) {
        let fast = BlockFrontQueue.indirectSlot(id: 0xABCD_0123, operation: op, sector: 987_654, segments: 200, page: GrantRef(4242))
        let reference = BlockRequest(id: 0xABCD_0123, operation: .indirect(IndirectRequest(
            operation: op, sector: 987_654, segmentCount: 200, pages: [GrantRef(4242)]))).encoded()
        let a = withUnsafeBytes(of: fast) { Array($0) }
        let b = withUnsafeBytes(of: reference) { Array($0) }
        #expect(a == b)
    }
}
