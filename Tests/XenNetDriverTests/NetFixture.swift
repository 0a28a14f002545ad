import DriverTestSupport
import CXen
import Foundation
import Glibc
import XenABI
import XenHypervisor
import XenLocks
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator

/// A guest and dom0 on the simulator, wired as a netif device would be: the
/// guest shares two ring pages and a page per slot, dom0 maps the rings,
/// both ends bind one event channel, and a vif queue serves the rings.
final class NetFixture: @unchecked Sendable {
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let sharer: any GrantSharer
    let feEvents: any EventChannels
    let fePort: EventPort
    let txRing: SharedPages
    let rxRing: SharedPages
    let txPool: SharedPages
    let rxPool: SharedPages
    /// dom0's mapper, watched: tests see every unmap as it happens.
    let mapper: WatchingMapper
    let beEvents: any EventChannels
    let bePort: EventPort
    let txMap: GrantMapping
    let rxMap: GrantMapping
    let sent = SentFrames()
    var attachment: MemoryAttachment!
    var vif: VifQueue!

    init(receiveGSO: Set<NetGSOType> = [.tcpv4, .tcpv6]) throws {
        guest = try hv.createDomain(frames: 1024)
        sharer = try guest.openGrantSharer()
        feEvents = try guest.openEventChannels()
        fePort = try feEvents.bindUnbound(remote: .dom0)
        txRing = try sharer.sharePages(count: 1, with: .dom0, writable: true)
        rxRing = try sharer.sharePages(count: 1, with: .dom0, writable: true)
        let slots = Int(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: 1).entryCount)
        txPool = try sharer.sharePages(count: slots, with: .dom0, writable: false)
        rxPool = try sharer.sharePages(count: slots, with: .dom0, writable: true)

        mapper = WatchingMapper(try hv.dom0.openGrantMapper())
        beEvents = try hv.dom0.openEventChannels()
        bePort = try beEvents.bindInterdomain(remote: guest.domainID, remotePort: fePort)
        txMap = try mapper.map(txRing.refs, from: guest.domainID, writable: true)
        rxMap = try mapper.map(rxRing.refs, from: guest.domainID, writable: true)
        attachment = MemoryAttachment { [sent] frame, offload in
            sent.frames.withLock { $0.append((Array(frame), offload)) }
            return true
        }
        self.receiveGSO = receiveGSO
    }

    let receiveGSO: Set<NetGSOType>

    deinit {
        // A test that failed before teardown: end the vif's thread before the
        // hypervisor's memory goes, or it faults on it and takes every other test along.
        vif?.stop()
    }

    /// Starts the vif (which owns dom0's ring mappings and event channel from now on) on the memory attachment, or on `other`; call after
    /// the frontend initialised the rings.
    func startBackend(attachment other: (any NetworkAttachment)? = nil) throws {
        vif = try VifQueue(txRing: txMap, rxRing: rxMap, events: beEvents, mapper: mapper,
                           attachment: other ?? attachment,
                           configuration: VifConfiguration(frontend: guest.domainID, txPort: bePort, rxPort: bePort,
                                                           receiveGSO: receiveGSO))
        vif.start()
    }

    func makeFrontend() throws -> NetFrontQueue {
        try NetFrontQueue(backend: .dom0, txRing: txRing.memory, rxRing: rxRing.memory, txPages: txPool, rxPages: rxPool,
                          events: feEvents, txPort: fePort, rxPort: fePort)
    }

    /// Stops the vif and releases everything; returns the simulator's leftovers.
    func teardown() throws -> Leftovers {
        if let vif {
            vif.stop()
        } else {
            try mapper.unmap(txMap)
            try mapper.unmap(rxMap)
            try beEvents.unbind(bePort)
            beEvents.close()
        }
        try feEvents.unbind(fePort)
        for pages in [txRing, rxRing, txPool, rxPool] { try sharer.unshare(pages) }
        mapper.close()
        feEvents.close()
        sharer.close()
        return hv.shutdown()
    }

    /// Takes the frontend's pending events and re-arms their ports, without waiting:
    /// a test looks again after `eventually`'s sleep, never holding a pool thread.
    func takeFrontendEvents() throws {
        while let port = try feEvents.pending() { try feEvents.unmask(port) }
    }

    func sentFrames() -> [(bytes: [UInt8], offload: FrameOffload)] { sent.frames.withLock { $0 } }
}

/// A frame of `length` bytes with a recognisable pattern and an Ethernet-ish header.
func patternFrame(_ length: Int, seed: UInt8) -> [UInt8] {
    (0 ..< length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
}

/// Frames the guest sent, as the attachment saw them.
final class SentFrames: Sendable {
    let frames = Locked<[(bytes: [UInt8], offload: FrameOffload)]>([])
}
