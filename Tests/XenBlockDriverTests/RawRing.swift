import CXen
import DriverTestSupport
import Foundation
import TestSupport
import XenABI
import XenBlockProtocol
import XenRing

/// A frontend that writes raw slots (for hostile requests and exact grant patterns).
extension BlockFixture {
    /// Pushes `slots` on queue 0's ring (in batches as the ring allows), and returns
    /// every response in order. Native calls may follow each other; an i386 one
    /// initialises the ring, so it comes alone.
    func pushRaw(_ slots: [blkif_request], abi: BlkifABI = .native) async throws -> [BlockResponse] {
        let ring = resources[0].ring.memory
        var responses: [BlockResponse] = []
        func drive<Req: BitwiseCopyable, Rsp: BitwiseCopyable>(_ ring: inout FrontRing<Req, Rsp>) async throws {
            let raw = try await exchange(slots, on: &ring, events: resources[0].events, port: resources[0].port) { ring, slot in
                ring.withNextRequestSlot { p in
                    var s = slot
                    withUnsafeBytes(of: &s) { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: abi.requestSize) }
                }
            }
            responses = raw.map { r in
                var copy = r
                return withUnsafeBytes(of: &copy) { BlockResponse(copyingSlotAt: $0.baseAddress!, abi: abi) }
            }
        }
        switch abi {
        case .x86_64:
            // After the requests of earlier calls, all answered.
            let produced = SharedRingHeader(ring.base).requestProducer.load(ordering: .relaxed)
            var r = try FrontRing<blkif_request, blkif_response>(attachingTo: ring, at: RingIndex(produced))
            try await drive(&r)
        case .x86_32:
            var r = try FrontRing<X32Slot, X32Response>(initializing: ring)
            try await drive(&r)
        }
        return responses
    }
}

/// A read or write slot with every segment on the same sectors of its page.
func rawRequest(_ op: BlkifOperation, id: UInt64, sector: UInt64, grefs: [GrantRef], first: UInt8 = 0, last: UInt8 = 7,
                abi: BlkifABI = .native) -> blkif_request {
    var segments = BlockSegments()
    for g in grefs { segments.append(BlockSegment(gref: g, firstSector: first, lastSector: last)) }
    return BlockRequest(id: id, operation: op == .read ? .read(sector: sector, segments: segments)
                                                       : .write(sector: sector, segments: segments)).encoded(abi: abi)
}
