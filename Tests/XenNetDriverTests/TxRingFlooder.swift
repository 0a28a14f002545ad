import CXen
import Foundation
import Glibc
import XenABI
import DriverTestSupport
import XenNetProtocol
import XenRing

/// A frontend that never lets the vif's tx ring go idle: every free slot refilled with a
/// good 60-byte packet, every response taken, the backend rung (see `Flooder`). Both
/// rings are initialised here (rx with no buffers posted): start the backend after this.
func txRingFlooder(_ f: NetFixture) throws -> Flooder {
    var tx = try FrontRing<netif_tx_request, netif_tx_response>(initializing: f.txRing.memory)
    var rx = try FrontRing<netif_rx_request, netif_rx_response>(initializing: f.rxRing.memory)
    _ = rx.pushRequests()
    let ref = f.txPool.refs[0].rawValue
    var id: UInt16 = 0
    return Flooder {
        while !tx.isFull {
            id = (id &+ 1) % 200
            tx.produce(netif_tx_request(gref: ref, offset: 0, flags: 0, id: id, size: 60))
        }
        if tx.pushRequests() { try? f.feEvents.notify(f.fePort) }
        var answered = 0
        while (try? tx.checkForResponses()) ?? 0 > 0 {
            while tx.nextResponse() != nil { answered += 1 }
        }
        while let p = try? f.feEvents.pending() { try? f.feEvents.unmask(p) }
        return answered
    }
}
