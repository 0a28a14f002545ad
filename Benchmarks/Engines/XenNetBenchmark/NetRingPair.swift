import CXen
import XenABI
import XenHypervisor
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator

/// A guest and dom0 on the simulator, wired as one netif device (without
/// xenstore): per queue, shared rings and a page per slot, the rings mapped in dom0,
/// one event channel with a handle of its own on each side. Benchmarks build their two
/// ends on it.
final class NetRingPair {
    /// One queue's two ends before the drivers take them.
    final class Queue {
        let feEvents: any EventChannels
        let fePort: EventPort
        let pages: [SharedPages]
        let beEvents: any EventChannels
        let bePort: EventPort
        let maps: [GrantMapping]
        var backendOwnsItsEnd = false

        init(guest: SimulatedDomain, sharer: any GrantSharer, mapper: any GrantMapper, dom0: SimulatedDomain) throws {
            feEvents = try guest.openEventChannels()
            fePort = try feEvents.bindUnbound(remote: .dom0)
            let slots = Int(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: 1).entryCount)
            pages = try [(1, true), (1, true), (slots, false), (slots, true)].map { count, writable in
                try sharer.sharePages(count: count, with: .dom0, writable: writable)
            }
            beEvents = try dom0.openEventChannels()
            bePort = try beEvents.bindInterdomain(remote: guest.domainID, remotePort: fePort)
            let granter = guest.domainID
            maps = try [pages[0], pages[1]].map { try mapper.map($0.refs, from: granter, writable: true) }
        }
    }

    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let sharer: any GrantSharer
    let mapper: any GrantMapper
    let queues: [Queue]
    /// Queue 0's frontend event channel handle.
    var feEvents: any EventChannels { queues[0].feEvents }

    init(queues count: Int = 1) throws {
        guest = try hv.createDomain(frames: 1024 * max(1, count))
        let sharer = try guest.openGrantSharer()
        self.sharer = sharer
        let mapper = try hv.dom0.openGrantMapper()
        self.mapper = mapper
        let (guest, dom0) = (self.guest, hv.dom0)
        queues = try (0 ..< max(1, count)).map { _ in try Queue(guest: guest, sharer: sharer, mapper: mapper, dom0: dom0) }
    }

    /// Queue `index`'s frontend (initialises its rings and posts rx buffers).
    func makeFrontend(queue index: Int = 0) throws -> NetFrontQueue {
        let q = queues[index]
        return try NetFrontQueue(backend: .dom0, txRing: q.pages[0].memory, rxRing: q.pages[1].memory, txPages: q.pages[2],
                                 rxPages: q.pages[3], events: q.feEvents, txPort: q.fePort, rxPort: q.fePort)
    }

    /// Queue `index`'s backend on `attachment`; start it after `makeFrontend(queue:)`. It
    /// owns dom0's ring mappings and event channel of that queue from now on.
    func makeBackend(queue index: Int = 0, attachment: any NetworkAttachment, receives: Bool = true, cpu: Int32?) throws -> VifQueue {
        let q = queues[index]
        q.backendOwnsItsEnd = true
        return try VifQueue(txRing: q.maps[0], rxRing: q.maps[1], events: q.beEvents, mapper: mapper,
                            attachment: attachment,
                            configuration: VifConfiguration(frontend: guest.domainID, txPort: q.bePort, rxPort: q.bePort,
                                                            receiveGSO: [.tcpv4, .tcpv6], receives: receives),
                            cpu: cpu)
    }

    /// Releases everything; call after both ends stopped.
    func close() {
        for q in queues {
            if !q.backendOwnsItsEnd {
                for m in q.maps { try? mapper.unmap(m) }
                try? q.beEvents.unbind(q.bePort)
                q.beEvents.close()
            }
            try? q.feEvents.unbind(q.fePort)
            for p in q.pages { try? sharer.unshare(p) }
            q.feEvents.close()
        }
        mapper.close()
        sharer.close()
        _ = hv.shutdown()
    }
}
