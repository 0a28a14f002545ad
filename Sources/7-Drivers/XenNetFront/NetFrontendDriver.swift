import CXen
import Logging
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenNetProtocol
import XenRing
import XenStore

/// The frontend half of one vif as a XenBus driver around a ``GuestPort``: `prepare`
/// shares the rings and a page per slot and binds the event channel, `connect` starts the
/// pump between the rings and `port`, `disconnect` releases it all (the handshake calls it
/// only once the backend stopped using the pages). The mirror of `BlockFrontendDriver`;
/// the guest program itself talks to the port (a ``PacketPort``, or a ``TapGuestPort``).
public final class NetFrontendDriver: XenbusDeviceDriver {
    /// The device directory (`/local/domain/<self>/device/vif/<id>`).
    public let path: String
    private let hypervisor: any Hypervisor
    private let store: any XenStoreConnection
    private let port: any GuestPort
    private let logger: Logger
    private let session = Locked<Session?>(nil)

    /// What one connection holds.
    struct Session: @unchecked Sendable {
        var backend: DomainID
        var sharer: any GrantSharer
        var events: any EventChannels
        var eventPort: EventPort
        var pages: [SharedPages]
        /// Built at prepare, started at connect.
        var pump: NetFrontPump
        var started = false
    }

    /// Creates the driver of the vif whose frontend directory is `path`, exchanging frames
    /// with `port`; the handshake calls ``prepare()``, ``connect()`` and ``disconnect()``.
    public init(hypervisor: any Hypervisor, store: any XenStoreConnection, path: String, port: any GuestPort,
                logger: Logger = Logger(label: "netfront")) {
        self.hypervisor = hypervisor
        self.store = store
        self.path = path
        self.port = port
        self.logger = logger
    }

    /// The pump's counters while connected.
    public var counters: NetFrontCounters? { session.withLock { $0?.started == true ? $0?.pump.counters : nil } }

    /// Drops any previous session, reads `backend-id`, shares the tx and rx ring pages and a
    /// page per slot of each, allocates the event channel and builds the queue and pump;
    /// then writes `tx-ring-ref`, `rx-ring-ref`, `event-channel`, `request-rx-copy`,
    /// `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4` and `feature-gso-tcpv6` in one
    /// transaction. On a throw nothing stays shared.
    /// - Throws: `XenstoreValueError` for a missing or malformed `backend-id`, the
    ///   hypervisor's errors when pages cannot be shared or a port allocated, `RingError`, and
    ///   `XenStoreError` when the transaction fails.
    public func prepare() async throws {
        await disconnect()
        let backend = try await store.readDomainID(path, XenbusKey.backendID)
        let sharer = try hypervisor.openGrantSharer()
        let events = try hypervisor.openEventChannels()
        var pages: [SharedPages] = []
        do {
            let slots = Int(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: 1).entryCount)
            for (count, writable) in [(1, true), (1, true), (slots, false), (slots, true)] {
                pages.append(try sharer.sharePages(count: count, with: backend, writable: writable))
            }
            let eventPort = try events.bindUnbound(remote: backend)
            let pump = NetFrontPump(
                queue: try NetFrontQueue(backend: backend, txRing: pages[0].memory, rxRing: pages[1].memory,
                                         txPages: pages[2], rxPages: pages[3], events: events,
                                         txPort: eventPort, rxPort: eventPort),
                port: port, events: events)
            let keys: [(String, String)] = [
                (XenbusKey.txRingRef, "\(pages[0].refs[0].rawValue)"), (XenbusKey.rxRingRef, "\(pages[1].refs[0].rawValue)"),
                (XenbusKey.eventChannel, "\(eventPort.rawValue)"), ("request-rx-copy", "1"), ("feature-rx-notify", "1"),
                ("feature-sg", "1"), ("feature-gso-tcpv4", "1"), ("feature-gso-tcpv6", "1"),
            ]
            try await store.inTransaction { tx in
                for (key, value) in keys { try await tx.write(self.path + "/" + key, value) }
            }
            session.withLock {
                $0 = Session(backend: backend, sharer: sharer, events: events, eventPort: eventPort, pages: pages,
                             pump: pump)
            }
        } catch {
            for p in pages { try? sharer.unshare(p) }
            sharer.close()
            events.close()
            throw error
        }
    }

    /// Reads the backend's `feature-rx-copy`, `feature-sg`, `feature-gso-tcpv4`,
    /// `feature-gso-tcpv6` and `feature-no-csum-offload`, tells the port, and starts the pump.
    /// - Throws: ``NetFrontError`` `.notSupported` when the backend cannot copy into receive
    ///   buffers, `.notPrepared` when this session's pump was already started or never made,
    ///   `XenstoreValueError` for a malformed key, and the port's own error.
    public func connect() async throws {
        let backendDir = try await store.read(path + "/" + XenbusKey.backend)
        guard try await store.readFeature(backendDir, XenbusKey.featureRxCopy) else {
            throw NetFrontError(.notSupported, "backend cannot copy into receive buffers (feature-rx-copy)")
        }
        let features = NetBackendFeatures(
            scatterGather: try await store.readFeature(backendDir, XenbusKey.featureSG),
            segmentation: Set([
                try await store.readFeature(backendDir, XenbusKey.featureGSOTCPv4) ? NetGSOType.tcpv4 : nil,
                try await store.readFeature(backendDir, XenbusKey.featureGSOTCPv6) ? NetGSOType.tcpv6 : nil,
            ].compactMap { $0 }),
            checksumOffload: !(try await store.readFeature(backendDir, XenbusKey.featureNoCsumOffload)))
        let pump: NetFrontPump? = session.withLock { s in
            guard let current = s, !current.started else { return nil }
            s?.started = true
            return current.pump
        }
        guard let pump else { throw NetFrontError(.notPrepared, "connect without a fresh prepare") }
        try pump.start(backend: features)
        logger.info("\(path): connected")
    }

    /// Stops the pump, then unbinds the port and ends the grants (the handshake calls this only
    /// once the backend stopped using the pages). Idempotent.
    public func disconnect() async {
        guard let s = session.withLock({ $0.take() }) else { return }
        // The pages and the port are given back only once the pump's thread is gone.
        _ = await s.pump.stopped()
        try? s.events.unbind(s.eventPort)
        for p in s.pages {
            do { try s.sharer.unshare(p) } catch { logger.error("\(path): unshare: \(error)") }
        }
        s.sharer.close()
        s.events.close()
        logger.info("\(path): disconnected")
    }
}
