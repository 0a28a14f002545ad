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
/// shares the rings and a page per slot and binds the event channel of each queue,
/// `connect` starts a pump per queue between its rings and `port`, `disconnect` releases
/// it all (the handshake calls it only once the backend stopped using the pages). The
/// mirror of `BlockFrontendDriver`; the guest program itself talks to the port (a
/// ``PacketPort``, or a ``TapGuestPort``).
///
/// Multi-queue as `io/netif.h` describes it: asked for `queues` > 1, the driver takes the
/// smaller of that and the backend's `multi-queue-max-queues`, writes it as
/// `multi-queue-num-queues`, and each queue's `tx-ring-ref`, `rx-ring-ref` and
/// `event-channel` under `queue-N/`; one queue writes the top-level keys as before.
public final class NetFrontendDriver: XenbusDeviceDriver {
    /// The device directory (`/local/domain/<self>/device/vif/<id>`).
    public let path: String
    /// The queues wished for; the backend's `multi-queue-max-queues` may allow fewer.
    public let queuesWanted: Int
    private let hypervisor: any Hypervisor
    private let store: any XenStoreConnection
    private let port: any GuestPort
    private let logger: Logger
    private let session = Locked<Session?>(nil)
    /// What the connection before a resumed suspend shared, with its sharer: granted
    /// again by the next `prepare` when the destination's backend takes as many queues.
    private let beforeResume = Locked<(sharer: any GrantSharer, backend: DomainID, pages: [[SharedPages]])?>(nil)

    /// One queue of a connection: its event channel handle (its pump sleeps on it), its
    /// port, its four shared page runs (tx ring, rx ring, tx pages, rx pages) and its pump.
    struct QueueSession: @unchecked Sendable {
        var events: any EventChannels
        var eventPort: EventPort
        var pages: [SharedPages]
        /// The rings' state, kept across pumps (a cancelled suspend starts a new pump on it).
        var queue: NetFrontQueue
        /// Built at prepare, started at connect.
        var pump: NetFrontPump
    }

    /// What one connection holds.
    struct Session: @unchecked Sendable {
        var backend: DomainID
        /// The backend's directory as `prepare` read it (the handshake's peer: it does not
        /// change within a session).
        var backendDir: String?
        var sharer: any GrantSharer
        var queues: [QueueSession]
        var started = false
        /// What the backend takes, read at connect.
        var features: NetBackendFeatures?
        /// The pumps were stopped for a suspend.
        var quiesced = false
    }

    /// Creates the driver of the vif whose frontend directory is `path`, exchanging frames
    /// with `port` over up to `queues` queues (clamped to 1...16; the backend may allow
    /// fewer); the handshake calls ``prepare()``, ``connect()`` and ``disconnect()``.
    public init(hypervisor: any Hypervisor, store: any XenStoreConnection, path: String, port: any GuestPort,
                queues: Int = 1, logger: Logger = Logger(label: "netfront")) {
        self.hypervisor = hypervisor
        self.store = store
        self.path = path
        self.port = port
        self.queuesWanted = max(1, min(16, queues))
        self.logger = logger
    }

    /// What each queue of the current connection shares (tx ring, rx ring, tx pages, rx
    /// pages), queue 0 first: for diagnostics and tests.
    public var sharedPages: [[SharedPages]] { session.withLock { $0?.queues.map(\.pages) ?? [] } }

    /// The first pump's counters while connected.
    public var counters: NetFrontCounters? { session.withLock { $0?.started == true ? $0?.queues.first?.pump.counters : nil } }

    /// Every queue's pump while connected, queue 0 first (their counters, failures, threads).
    public var pumps: [NetFrontPump] {
        session.withLock { s in s?.started == true ? s?.queues.map(\.pump) ?? [] : [] }
    }

    /// Every queue's counters while connected, queue 0 first.
    public var queueCounters: [NetFrontCounters] {
        session.withLock { s in s?.started == true ? s?.queues.map { $0.pump.counters } ?? [] : [] }
    }

    /// Drops any previous session, reads `backend-id` and the backend's
    /// `multi-queue-max-queues`, and for each queue shares the tx and rx ring pages and a
    /// page per slot of each, allocates an event channel and builds the queue and pump;
    /// then returns the writes of `multi-queue-num-queues` (when the backend offers queues),
    /// each queue's `tx-ring-ref`, `rx-ring-ref` and `event-channel` (top-level for one
    /// queue, under `queue-N/` for several), `request-rx-copy`, `feature-rx-notify`,
    /// `feature-sg`, `feature-gso-tcpv4` and `feature-gso-tcpv6`, which also remove the ring
    /// keys of the other layout a previous session may have left. On a throw nothing stays
    /// shared.
    /// - Throws: `XenstoreValueError` for a missing or malformed `backend-id` or
    ///   `multi-queue-max-queues`, `XenStoreError` when they cannot be read, the port's
    ///   error when it cannot give its queues, the hypervisor's errors when pages cannot be
    ///   shared or a port allocated, and `RingError`.
    public func prepare() async throws -> XenbusWrites {
        // Taken before the disconnect below, which would let them go; put back if this
        // throws before using them (the next prepare, or a disconnect, takes them then).
        var untaken = beforeResume.withLock { k in defer { k = nil }; return k }
        defer { if let untaken { beforeResume.withLock { $0 = untaken } } }
        await disconnect()
        // Reads in flight together where none depends on another (each round trip is part
        // of a resumed guest's downtime), checked in the order they were read one by one.
        async let backendRead = store.readDomainID(path, XenbusKey.backendID)
        async let backendDirRead = store.readIfPresent(path + "/" + XenbusKey.backend)
        let backend = try await backendRead
        let backendDir = try await backendDirRead
        // Absent: a backend without multi-queue, to which `multi-queue-num-queues` means nothing.
        var offered: Int?
        if let backendDir {
            // One read: a value outside 1... is an error, none is nil.
            let absent: Int?? = .some(nil)
            offered = try await store.readValue(backendDir, XenbusKey.multiQueueMaxQueues, default: absent,
                                                expected: "a decimal in 1...\(UInt32.max)") { text, path throws(XenstoreValueError) -> Int? in
                Int(try XenstoreValue.decimal(text, key: path, in: UInt32(1)...UInt32.max))
            }
        }
        let count = max(1, min(queuesWanted, offered ?? 1))
        let ports = try port.queuePorts(count)
        guard !ports.isEmpty else { throw NetFrontError(.notSupported, "the guest port gave no queue") }
        // After a resumed suspend, the same pages granted anew when the backend takes as
        // many queues: no new pages to fault in and zero while the guest is down.
        var kept: [[SharedPages]] = []
        let sharer: any GrantSharer
        let old = untaken
        untaken = nil
        if let old {
            if old.pages.count == count && old.backend == backend {
                kept = old.pages
            } else {
                for q in old.pages { for p in q { old.sharer.forget(p) } }
            }
            sharer = old.sharer
        } else {
            sharer = try hypervisor.openGrantSharer()
        }
        // Sharing pages and allocating ports are daemon round trips that block: on a thread
        // of their own, so that the guest's other tasks (the other devices' handshakes after
        // a resume) go on meanwhile on the cooperative pool.
        let queues: [QueueSession]
        do {
            let (hypervisor, kept) = (self.hypervisor, kept)
            queues = try await onOwnThread(named: "netfront-prepare") {
                try Self.makeQueues(count, backend: backend, ports: ports, kept: kept, hypervisor: hypervisor, sharer: sharer)
            }
        } catch {
            sharer.close()
            throw error
        }
        var keys: [(String, String)] = [("request-rx-copy", "1"), ("feature-rx-notify", "1"),
                                        ("feature-sg", "1"), ("feature-gso-tcpv4", "1"), ("feature-gso-tcpv6", "1")]
        if offered != nil { keys.append((XenbusKey.multiQueueNumQueues, "\(count)")) }
        for (q, queue) in queues.enumerated() {
            let dir = count == 1 ? "" : "queue-\(q)/"
            keys += [(dir + XenbusKey.txRingRef, "\(queue.pages[0].refs[0].rawValue)"),
                     (dir + XenbusKey.rxRingRef, "\(queue.pages[1].refs[0].rawValue)"),
                     (dir + XenbusKey.eventChannel, "\(queue.eventPort.rawValue)")]
        }
        let ringKeys = [XenbusKey.txRingRef, XenbusKey.rxRingRef, XenbusKey.eventChannel,
                        XenbusKey.eventChannelTx, XenbusKey.eventChannelRx]
        let path = self.path
        let entries = keys.map { (path + "/" + $0.0, $0.1) }
        let writes = XenbusWrites { tx in
            // What a previous session of the other layout left would contradict netif.h's rule.
            let children = (try? await tx.directory(path)) ?? []
            for child in children where child.hasPrefix("queue-") { try await tx.rm(path + "/" + child) }
            if count > 1 { for key in ringKeys where children.contains(key) { try await tx.rm(path + "/" + key) } }
            try await tx.writeAll(entries)
        }
        session.withLock { $0 = Session(backend: backend, backendDir: backendDir, sharer: sharer, queues: queues) }
        logger.info("\(path): \(count) queue(s) (wanted \(queuesWanted), backend offers \(offered.map(String.init) ?? "no multi-queue"))")
        return writes
    }

    /// Reads the backend's `feature-rx-copy`, `feature-sg`, `feature-gso-tcpv4`,
    /// `feature-gso-tcpv6` and `feature-no-csum-offload`, tells the port, and starts the pumps.
    /// - Throws: ``NetFrontError`` `.notSupported` when the backend cannot copy into receive
    ///   buffers, `.notPrepared` when this session's pumps were already started or never made,
    ///   `XenstoreValueError` for a malformed key, and the port's own error.
    public func connect() async throws {
        // Read by prepare: one round trip less (after a resume, downtime).
        let known = session.withLock { $0?.backendDir }
        let backendDir = if let known { known } else { try await store.read(path + "/" + XenbusKey.backend) }
        // The features' reads in flight together, checked in the order they were read one by one.
        async let rxCopy = store.readFeature(backendDir, XenbusKey.featureRxCopy)
        async let sg = store.readFeature(backendDir, XenbusKey.featureSG)
        async let gso4 = store.readFeature(backendDir, XenbusKey.featureGSOTCPv4)
        async let gso6 = store.readFeature(backendDir, XenbusKey.featureGSOTCPv6)
        async let noCsum = store.readFeature(backendDir, XenbusKey.featureNoCsumOffload)
        guard try await rxCopy else {
            throw NetFrontError(.notSupported, "backend cannot copy into receive buffers (feature-rx-copy)")
        }
        let features = NetBackendFeatures(
            scatterGather: try await sg,
            segmentation: Set([try await gso4 ? NetGSOType.tcpv4 : nil, try await gso6 ? NetGSOType.tcpv6 : nil].compactMap { $0 }),
            checksumOffload: !(try await noCsum))
        let pumps: [NetFrontPump]? = session.withLock { s in
            guard let current = s, !current.started else { return nil }
            s?.started = true
            s?.features = features
            return current.queues.map(\.pump)
        }
        guard let pumps else { throw NetFrontError(.notPrepared, "connect without a fresh prepare") }
        for pump in pumps { try pump.start(backend: features) }
        logger.info("\(path): connected")
    }

    /// Stops the pumps, then unbinds the ports and ends the grants (the handshake calls this
    /// only once the backend stopped using the pages). Idempotent.
    public func disconnect() async {
        if let old = beforeResume.withLock({ k in defer { k = nil }; return k }) {
            for q in old.pages { for p in q { old.sharer.forget(p) } }
            old.sharer.close()
        }
        guard let s = session.withLock({ $0.take() }) else { return }
        // The pages and the ports are given back only once the pumps' threads are gone.
        for q in s.queues { _ = await q.pump.stopped() }
        Self.release(s.queues, sharer: s.sharer, logger: logger)
        s.sharer.close()
        logger.info("\(path): disconnected")
    }

    /// Each queue's rings and pages shared (the `kept` ones again, for the queues they
    /// cover), its port allocated, its pump built (not started). On a throw, what it shared
    /// is unshared and the ports it made are closed. Blocks: called off the pool.
    private static func makeQueues(_ count: Int, backend: DomainID, ports: [any GuestPort], kept: [[SharedPages]],
                                   hypervisor: any Hypervisor, sharer: any GrantSharer) throws -> [QueueSession] {
        var queues: [QueueSession] = []
        var pending: (events: any EventChannels, pages: [SharedPages])?
        do {
            let slots = Int(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: 1).entryCount)
            for q in 0 ..< count {
                let events = try hypervisor.openEventChannels()
                pending = (events, [])
                if q < kept.count {
                    for p in kept[q] { pending?.pages.append(try sharer.shareAgain(p)) }
                } else {
                    for (n, writable) in [(1, true), (1, true), (slots, false), (slots, true)] {
                        pending?.pages.append(try sharer.sharePages(count: n, with: backend, writable: writable))
                    }
                }
                let pages = pending?.pages ?? []
                let eventPort = try events.bindUnbound(remote: backend)
                let queue = try NetFrontQueue(backend: backend, txRing: pages[0].memory, rxRing: pages[1].memory,
                                              txPages: pages[2], rxPages: pages[3], events: events,
                                              txPort: eventPort, rxPort: eventPort)
                let pump = NetFrontPump(queue: queue, port: ports[q % ports.count], events: events, transmits: q < ports.count)
                queues.append(QueueSession(events: events, eventPort: eventPort, pages: pages, queue: queue, pump: pump))
                pending = nil
            }
        } catch {
            release(queues, sharer: sharer, logger: nil)
            if let pending {
                for p in pending.pages { try? sharer.unshare(p) }
                pending.events.close()
            }
            // The kept pages of the queues not made (shared again in part or not at all): forgotten.
            for q in kept.dropFirst(queues.count) { for p in q { sharer.forget(p) } }
            throw error
        }
        return queues
    }

    /// Unbinds each queue's port, ends its grants and closes its handle; the pumps must
    /// not run (stopped, or never started).
    private static func release(_ queues: [QueueSession], sharer: any GrantSharer, logger: Logger?) {
        for q in queues {
            try? q.events.unbind(q.eventPort)
            for p in q.pages {
                do { try sharer.unshare(p) } catch { logger?.error("unshare: \(error)") }
            }
            q.events.close()
        }
    }
}

extension NetFrontendDriver: XenbusSuspendableDriver {
    /// Stops the pumps (Linux's netfront has no suspend hook: a frozen guest just stops
    /// running them). Frames waiting in the port stay there; the rings stay as they are.
    public func quiesce() async {
        let pumps = session.withLock { s -> [NetFrontPump] in
            guard let current = s, current.started, !current.quiesced else { return [] }
            s?.quiesced = true
            return current.queues.map(\.pump)
        }
        for pump in pumps { _ = await pump.stopped() }
    }

    /// `.cancelled`: starts a new pump on each queue's rings as they were (what the
    /// backend answered meanwhile is taken then). `.resumed`: forgets the rings, pages and
    /// ports without ending or unbinding them (Linux's `netfront_resume` then
    /// `xennet_disconnect_backend`); the handshake that follows shares new ones, possibly
    /// with another number of queues. Frames in flight are lost, as on a wire.
    public func resume(_ outcome: SuspendOutcome) async {
        switch outcome {
        case .cancelled:
            let restart: (pumps: [NetFrontPump], features: NetBackendFeatures)? = session.withLock { s in
                guard var current = s, current.quiesced, let features = current.features else { return nil }
                current.quiesced = false
                for q in current.queues.indices {
                    let old = current.queues[q].pump
                    current.queues[q].pump = NetFrontPump(queue: current.queues[q].queue, port: old.port,
                                                          events: current.queues[q].events, transmits: old.transmits)
                }
                s = current
                return (current.queues.map(\.pump), features)
            }
            guard let restart else { return }
            for pump in restart.pumps {
                do {
                    try pump.start(backend: restart.features)
                } catch {
                    logger.error("\(path): restarting a pump after a cancelled suspend: \(error)")
                }
            }
        case .resumed:
            guard let s = session.withLock({ $0.take() }) else { return }
            for q in s.queues { _ = await q.pump.stopped() }
            for q in s.queues { q.events.close() }
            // Kept, with the sharer that shared them, for the next `prepare` to grant again.
            let stale = beforeResume.withLock { k in
                defer { k = (s.sharer, s.backend, s.queues.map(\.pages)) }
                return k
            }
            if let stale {
                for q in stale.pages { for p in q { stale.sharer.forget(p) } }
                stale.sharer.close()
            }
            logger.info("\(path): resumed elsewhere; reconnecting")
        }
    }
}
