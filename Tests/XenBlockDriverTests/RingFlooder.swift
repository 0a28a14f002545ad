import CXen
import Foundation
import Glibc
import XenABI
import XenBlockFront
import XenBlockProtocol
import XenHypervisor
import DriverTestSupport
import XenRing

/// A frontend that never lets blkback's ring go idle: every free slot refilled with a
/// one-page read, every response taken, the backend rung (see `Flooder`).
func ringFlooder(_ resources: BlockFrontQueueResources) throws -> Flooder {
    var ring = try FrontRing<blkif_request, blkif_response>(
        attachingTo: resources.ring.memory,
        at: RingIndex(SharedRingHeader(resources.ring.memory.base).requestProducer.load(ordering: .relaxed)))
    var id: UInt64 = 0
    let page = resources.pool.refs[0]
    return Flooder {
        while !ring.isFull {
            id &+= 1
            let slot = rawRequest(.read, id: id, sector: 0, grefs: [page])
            ring.withNextRequestSlot { $0.pointee = slot }
        }
        if ring.pushRequests() { try? resources.events.notify(resources.port) }
        var answered = 0
        while (try? ring.checkForResponses()) ?? 0 > 0 {
            while ring.nextResponse() != nil { answered += 1 }
        }
        while let p = try? resources.events.pending() { try? resources.events.unmask(p) }
        return answered
    }
}
