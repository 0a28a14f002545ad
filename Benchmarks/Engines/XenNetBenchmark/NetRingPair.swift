import CXen
import XenABI
import XenHypervisor
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator

/// A guest and dom0 on the simulator, wired as one netif device (without
/// xenstore): shared rings and a page per slot, the rings mapped in dom0,
/// one event channel. Benchmarks build their two ends on it.
final class NetRingPair {
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let sharer: any GrantSharer
    let feEvents: any EventChannels
    let fePort: EventPort
    let pages: [SharedPages]
    let mapper: any GrantMapper
    let beEvents: any EventChannels
    let bePort: EventPort
    let maps: [GrantMapping]
    private var backendOwnsItsEnd = false

    init() throws {
        guest = try hv.createDomain(frames: 1024)
        let sharer = try guest.openGrantSharer()
        self.sharer = sharer
        feEvents = try guest.openEventChannels()
        fePort = try feEvents.bindUnbound(remote: .dom0)
        let slots = Int(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: 1).entryCount)
        pages = try [(1, true), (1, true), (slots, false), (slots, true)].map { count, writable in
            try sharer.sharePages(count: count, with: .dom0, writable: writable)
        }
        let mapper = try hv.dom0.openGrantMapper()
        self.mapper = mapper
        beEvents = try hv.dom0.openEventChannels()
        bePort = try beEvents.bindInterdomain(remote: guest.domainID, remotePort: fePort)
        let granter = guest.domainID
        maps = try [pages[0], pages[1]].map { try mapper.map($0.refs, from: granter, writable: true) }
    }

    /// The frontend's queue (initialises the rings and posts rx buffers).
    func makeFrontend() throws -> NetFrontQueue {
        try NetFrontQueue(backend: .dom0, txRing: pages[0].memory, rxRing: pages[1].memory, txPages: pages[2],
                          rxPages: pages[3], events: feEvents, txPort: fePort, rxPort: fePort)
    }

    /// The backend's queue on `attachment`; start it after `makeFrontend()`. It owns
    /// dom0's ring mappings and event channel from now on.
    func makeBackend(attachment: any NetworkAttachment, cpu: Int32?) throws -> VifQueue {
        backendOwnsItsEnd = true
        return try VifQueue(txRing: maps[0], rxRing: maps[1], events: beEvents, mapper: mapper,
                     attachment: attachment,
                     configuration: VifConfiguration(frontend: guest.domainID, txPort: bePort, rxPort: bePort,
                                                     receiveGSO: [.tcpv4, .tcpv6]),
                     cpu: cpu)
    }

    /// Releases everything; call after both ends stopped.
    func close() {
        if !backendOwnsItsEnd {
            for m in maps { try? mapper.unmap(m) }
            try? beEvents.unbind(bePort)
            beEvents.close()
        }
        try? feEvents.unbind(fePort)
        for p in pages { try? sharer.unshare(p) }
        mapper.close()
        feEvents.close()
        sharer.close()
        _ = hv.shutdown()
    }
}
