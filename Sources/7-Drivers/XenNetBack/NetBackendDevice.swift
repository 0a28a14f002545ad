import Glibc
import Logging
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenNetProtocol
import XenNetTap
import XenStore

/// Which vif a backend serves: frontend domain and device id, named as Xen
/// names the interface (`vif<domid>.<devid>`).
public struct VifIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The guest domain that runs the vif's frontend.
    public var frontend: DomainID
    /// The vif's device id within that domain (`vif/<id>` in xenstore).
    public var id: UInt32
    /// Names vif `id` of domain `frontend`.
    public init(frontend: DomainID, id: UInt32) {
        self.frontend = frontend
        self.id = id
    }
    /// `vif<domid>.<devid>`, the interface name Xen's hotplug scripts give the vif.
    public var interfaceName: String { "vif\(frontend.rawValue).\(id)" }
    /// The interface name.
    public var description: String { interfaceName }
}

/// What the frontend said it can take, read at connect time, and the
/// guest's MAC address the toolstack wrote (`mac`), if it did.
public struct VifFrontendFeatures: Hashable, Sendable {
    /// The guest's MAC address (`mac`), backend directory first; nil if neither has one.
    public var mac: MACAddress?
    /// The frontend takes a packet over several slots (`feature-sg`).
    public var scatterGather: Bool
    /// The segmentation types the frontend takes on receive (`feature-gso-tcpv4`,
    /// `feature-gso-tcpv6`).
    public var receiveGSO: Set<NetGSOType>
    /// The frontend takes frames with a blank checksum (`feature-no-csum-offload` not set).
    public var receiveChecksumBlank: Bool
    /// The queues the frontend asked for (`multi-queue-num-queues`, 1 without it): an
    /// attachment factory makes as many receive queues (``NetworkAttachment/receiveQueues(_:)``),
    /// e.g. a multi-queue TAP.
    public var queues: Int = 1

    /// The TAP offloads that match: the kernel may hand the vif only what the
    /// frontend can take.
    public var tapOffloads: TapOffloads {
        guard receiveChecksumBlank else { return [] }
        var o: TapOffloads = [.checksum]
        if scatterGather, receiveGSO.contains(.tcpv4) { o.insert(.tcpv4Segmentation) }
        if scatterGather, receiveGSO.contains(.tcpv6) { o.insert(.tcpv6Segmentation) }
        return o
    }
}

/// Makes a vif's attachment once the frontend's features are known. Async so a factory
/// can read the vif's backend directory and set up the host's side (``VifHotplug``).
public typealias AttachmentFactory = @Sendable (VifIdentity, VifFrontendFeatures) async throws -> any NetworkAttachment

/// The backend half of one vif as a XenBus driver: advertises netback's features in
/// `prepare`, connects to the rings and event channel(s) the frontend wrote and serves
/// each ring pair with a `VifQueue` (a thread each) in `connect`, and stops and unmaps
/// everything in `disconnect`. ``NetBackend`` runs one per vif; the mirror of
/// `BlockBackendDevice`.
///
/// Multi-queue as `io/netif.h` describes it: the backend offers `multi-queue-max-queues`;
/// a frontend asking for 2 or more with `multi-queue-num-queues` writes each queue's
/// `tx-ring-ref`, `rx-ring-ref` and `event-channel` (or `event-channel-tx` and
/// `event-channel-rx`) under `queue-N/`, and one queue keeps the top-level keys.
public final class NetBackendDevice: XenbusDeviceDriver {
    /// The vif this driver serves.
    public let identity: VifIdentity
    /// The backend directory (`/local/domain/<self>/backend/vif/<fe>/<id>`).
    public let path: String
    /// The frontend directory the toolstack named in `frontend`.
    public let peerPath: String
    private let hypervisor: any Hypervisor
    private let store: any XenStoreConnection
    private let attach: AttachmentFactory
    private let logger: Logger
    /// `multi-queue-max-queues`, the most queues a frontend may ask for.
    public let maxQueues: Int
    private let connection = Locked<Connection?>(nil)
    /// What to do when the frontend broke a ring: reset this device (close,
    /// then allow a new session), never touching another.
    public let onRingFailure: @Sendable (any Error) -> Void

    /// Everything `connect` set up, released by `disconnect`. Each queue owns its rings
    /// and event channel handle (it releases them after its thread exited).
    struct Connection: @unchecked Sendable {
        var queues: [VifQueue]
        var mapper: any GrantMapper
        var attachment: any NetworkAttachment
    }

    /// The most queues any backend offers, whatever it is asked: each is a thread and two
    /// mapped rings per vif.
    public static let queueLimit = 16

    /// The default offer: a queue per CPU (as Linux netback's `max_queues`), at most
    /// ``queueLimit``.
    public static var defaultMaxQueues: Int {
        max(1, min(queueLimit, Int(clamping: sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
    }

    /// Creates the driver of vif `identity`, whose backend directory is `path` and frontend
    /// directory `peerPath`; `attach` makes its attachment at each connect. It offers
    /// `maxQueues` queues (clamped to 1...``queueLimit``).
    public init(identity: VifIdentity, path: String, peerPath: String, hypervisor: any Hypervisor, store: any XenStoreConnection,
                attach: @escaping AttachmentFactory, maxQueues: Int = NetBackendDevice.defaultMaxQueues,
                logger: Logger = Logger(label: "netback"),
                onRingFailure: @escaping @Sendable (any Error) -> Void = { _ in }) {
        self.maxQueues = max(1, min(Self.queueLimit, maxQueues))
        self.onRingFailure = onRingFailure
        self.identity = identity
        self.path = path
        self.peerPath = peerPath
        self.hypervisor = hypervisor
        self.store = store
        self.attach = attach
        self.logger = logger
    }

    /// The first queue's counters, while connected.
    public var counters: VifCounters? { connection.withLock { $0?.queues.first?.counters } }

    /// The running queues, while connected (one per ring pair).
    public var queues: [VifQueue] { connection.withLock { $0?.queues ?? [] } }

    /// The figures `xenpv top` shows, summed over the queues, while connected.
    public var statistics: [(String, UInt64)]? {
        connection.withLock { c in
            guard let queues = c?.queues, !queues.isEmpty else { return nil }
            func sum(_ f: (VifQueue) -> UInt64) -> UInt64 { queues.reduce(0) { $0 + f($1) } }
            return [("requests", sum { $0.counters.txPackets.value + $0.counters.rxPackets.value }),
                    ("tx_packets", sum { $0.counters.txPackets.value }), ("rx_packets", sum { $0.counters.rxPackets.value }),
                    ("bytes", sum { $0.counters.txBytes.value + $0.counters.rxBytes.value }),
                    ("notifies", sum { $0.counters.notifies.value }), ("sleeps", sum { $0.counters.sleeps.value }),
                    ("ring_fill", sum { UInt64($0.transmitRingFill) }), ("ring_size", sum { UInt64($0.transmitRingSize) }),
                    ("rx_buffers", sum { UInt64($0.receiveBuffersPosted) }),
                    ("dropped", sum { $0.counters.rxDroppedNoBuffers.value + $0.counters.txDroppedAttachment.value
                                          + $0.counters.badGrants.value })]
        }
    }

    /// Returns the writes that advertise netback's features: `feature-sg`,
    /// `feature-gso-tcpv4`, `feature-gso-tcpv6`, `feature-rx-copy`,
    /// `feature-split-event-channels` on; `feature-rx-flip`, `feature-multicast-control` off;
    /// `multi-queue-max-queues` (``maxQueues``); and `hotplug-status` "connected" (made
    /// together, so the toolstack never sees the status before the features).
    public func prepare() async throws -> XenbusWrites {
        let features = [("feature-sg", true), ("feature-gso-tcpv4", true), ("feature-gso-tcpv6", true),
                        ("feature-rx-copy", true), ("feature-rx-flip", false), ("feature-split-event-channels", true),
                        ("feature-multicast-control", false)]
        return .entries(features.map { (path + "/" + $0.0, $0.1 ? "1" : "0") }
                        + [(path + "/" + XenbusKey.multiQueueMaxQueues, String(maxQueues)),
                           (path + "/hotplug-status", "connected")])
    }

    /// Drops any previous connection, reads the frontend's `request-rx-copy`,
    /// `multi-queue-num-queues`, each queue's `tx-ring-ref`, `rx-ring-ref`, `event-channel`
    /// (or `event-channel-tx` and `event-channel-rx`) — top-level for one queue, under
    /// `queue-N/` for several — `mac` and features, then maps the rings, binds the ports,
    /// makes the attachment and starts a ``VifQueue`` per ring pair. On a throw nothing
    /// stays mapped or bound.
    /// - Throws: ``NetBackendError`` `.notSupported` when the frontend does not request rx
    ///   copy, `XenstoreValueError` for a missing or malformed key (a queue count of 0 or
    ///   more than ``maxQueues`` included), the attachment factory's error, and
    ///   ``NetBackendError`` `.queue` naming the queue whose grant does not map, whose port
    ///   does not bind or whose ring is already corrupt (the hypervisor's or `RingError` as
    ///   its `underlying`).
    public func connect() async throws {
        await disconnect()
        let fe = peerPath
        // Reads in flight together (each round trip is part of a migrated guest's
        // downtime), awaited in the order they are checked, so a bad key is reported as if
        // read one by one. One queue's top-level ring keys are read with the rest.
        async let rxCopyRead = store.readFeature(fe, XenbusKey.requestRxCopy)
        async let queuesRead = store.readNumber(fe, XenbusKey.multiQueueNumQueues, in: UInt32(1)...UInt32(maxQueues), default: 1)
        async let singleQueueRead = Self.queueKeys(fe, store)
        // The toolstack writes the guest's MAC in both directories; ours (dom0's) wins.
        async let ourMACRead = store.readMAC(path, XenbusKey.mac)
        async let theirMACRead = store.readMAC(fe, XenbusKey.mac)
        async let sgRead = store.readFeature(fe, XenbusKey.featureSG)
        async let gso4Read = store.readFeature(fe, XenbusKey.featureGSOTCPv4)
        async let gso6Read = store.readFeature(fe, XenbusKey.featureGSOTCPv6)
        async let noChecksumRead = store.readFeature(fe, XenbusKey.featureNoCsumOffload)
        // Only the copying receive path exists (as in Linux since 2013).
        guard try await rxCopyRead else {
            throw NetBackendError(.notSupported, "frontend does not request rx copy; page flipping is not supported")
        }
        let queueCount = Int(try await queuesRead)
        var rings: [QueueKeys] = []
        if queueCount == 1 {
            rings = [try await singleQueueRead]
        } else {
            // netif.h: several queues write theirs under queue-N.
            for q in 0 ..< queueCount { rings.append(try await Self.queueKeys("\(fe)/queue-\(q)", store)) }
        }
        var mac = try await ourMACRead
        if mac == nil { mac = try await theirMACRead }
        let features = VifFrontendFeatures(
            mac: mac.map { MACAddress($0[0], $0[1], $0[2], $0[3], $0[4], $0[5]) },
            scatterGather: try await sgRead,
            receiveGSO: Set([try await gso4Read ? NetGSOType.tcpv4 : nil, try await gso6Read ? NetGSOType.tcpv6 : nil].compactMap { $0 }),
            receiveChecksumBlank: !(try await noChecksumRead),
            queues: queueCount)
        let attachment = try await attach(identity, features)
        do {
            // Mapping and binding block (daemon round trips): off the cooperative pool, so
            // that the process's other handshakes go on meanwhile (as blkback's connect).
            try await onOwnThread(named: "netback-connect") { [self, rings] in
                try connect(rings, features: features, attachment: attachment)
            }
        } catch {
            await (attachment as? TapAttachment)?.close()
            throw error
        }
        logger.info("\(identity): connected, \(queueCount) queue(s) (mac \(features.mac.map { "\($0)" } ?? "none"), sg \(features.scatterGather), gso \(features.receiveGSO.map { "\($0)" }.sorted()), csum offload \(features.receiveChecksumBlank))")
    }

    /// One queue's keys as the frontend wrote them.
    struct QueueKeys {
        var txRef: GrantRef
        var rxRef: GrantRef
        var txPort: EventPort
        var rxPort: EventPort
    }

    /// One queue's keys in `dir`, read together: `tx-ring-ref`, `rx-ring-ref`, and
    /// `event-channel-tx` with `event-channel-rx` (split channels) or else `event-channel`.
    private static func queueKeys(_ dir: String, _ store: any XenStoreOperations) async throws -> QueueKeys {
        async let txRefRead = store.readGrantRef(dir, XenbusKey.txRingRef)
        async let rxRefRead = store.readGrantRef(dir, XenbusKey.rxRingRef)
        async let txPortRead = store.readEventPortIfPresent(dir, XenbusKey.eventChannelTx)
        async let rxPortRead = store.readEventPort(dir, XenbusKey.eventChannelRx)
        async let portRead = store.readEventPort(dir, XenbusKey.eventChannel)
        let (txRef, rxRef) = (try await txRefRead, try await rxRefRead)
        if let txPort = try await txPortRead {
            return QueueKeys(txRef: txRef, rxRef: rxRef, txPort: txPort, rxPort: try await rxPortRead)
        }
        let port = try await portRead
        return QueueKeys(txRef: txRef, rxRef: rxRef, txPort: port, rxPort: port)
    }

    /// Maps, binds, attaches and starts every queue; on any failure releases what it took
    /// (queues already built give back their rings and ports as they stop).
    private func connect(_ rings: [QueueKeys], features: VifFrontendFeatures, attachment: any NetworkAttachment) throws {
        let mapper = try hypervisor.openGrantMapper()
        var queues: [VifQueue] = []
        let offered = attachment.receiveQueues(rings.count)
        let receivers = offered.isEmpty ? [attachment] : Array(offered.prefix(rings.count))
        do {
            for (index, keys) in rings.enumerated() {
                do {
                    queues.append(try makeQueue(index, keys, mapper: mapper, features: features,
                                                attachment: receivers[index % receivers.count],
                                                receives: index < receivers.count))
                } catch {
                    throw NetBackendError(.queue, "queue \(index): \(error)", underlying: error)
                }
            }
        } catch {
            for q in queues { q.stop() }
            mapper.close()
            throw error
        }
        for q in queues { q.start() }
        connection.withLock { $0 = Connection(queues: queues, mapper: mapper, attachment: attachment) }
    }

    /// One queue: its own event channel handle (its thread sleeps on it), its rings mapped
    /// through the shared mapper. On a throw nothing of it stays mapped or bound.
    private func makeQueue(_ index: Int, _ keys: QueueKeys, mapper: any GrantMapper, features: VifFrontendFeatures,
                           attachment: any NetworkAttachment, receives: Bool) throws -> VifQueue {
        var cleanup: [() -> Void] = []
        defer { for undo in cleanup.reversed() { undo() } }
        let events = try hypervisor.openEventChannels()
        cleanup.append { events.close() }
        let tx = try mapper.map(keys.txRef, from: identity.frontend, writable: true)
        cleanup.append { try? mapper.unmap(tx) }
        let rx = try mapper.map(keys.rxRef, from: identity.frontend, writable: true)
        cleanup.append { try? mapper.unmap(rx) }
        let txPort = try events.bindInterdomain(remote: identity.frontend, remotePort: keys.txPort)
        cleanup.append { try? events.unbind(txPort) }
        let rxPort = keys.rxPort == keys.txPort
            ? txPort : try events.bindInterdomain(remote: identity.frontend, remotePort: keys.rxPort)
        if rxPort != txPort { cleanup.append { try? events.unbind(rxPort) } }
        let queue = try VifQueue(
            txRing: tx, rxRing: rx, events: events, mapper: mapper, attachment: attachment,
            configuration: VifConfiguration(frontend: identity.frontend, txPort: txPort, rxPort: rxPort,
                                            receiveGSO: features.scatterGather ? features.receiveGSO : [],
                                            receiveChecksumBlank: features.receiveChecksumBlank, receives: receives),
            onFailure: { [identity, logger, store, path, onRingFailure] error in
                logger.error("\(identity): queue \(index): ring failure, resetting the device: \(error)")
                Task { try? await store.write(path + "/error", "ring: queue \(index): \(error)") }
                onRingFailure(error)
            })
        cleanup.removeAll()
        return queue
    }

    /// Stops every queue (each unmaps its rings and unbinds its ports once its thread
    /// exited), closes the grant mapper and a TAP attachment (its device and what its
    /// hotplug set up). Idempotent.
    public func disconnect() async {
        guard let c = connection.withLock({ $0.take() }) else { return }
        for q in c.queues { await q.stopped() }
        c.mapper.close()
        await (c.attachment as? TapAttachment)?.close()
        logger.info("\(identity): disconnected")
    }
}
