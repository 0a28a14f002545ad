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
/// them with a `VifQueue` in `connect`, and stops and unmaps everything in `disconnect`.
/// ``NetBackend`` runs one per vif; the mirror of `BlockBackendDevice`.
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
    private let connection = Locked<Connection?>(nil)
    /// What to do when the frontend broke a ring: reset this device (close,
    /// then allow a new session), never touching another.
    public let onRingFailure: @Sendable (any Error) -> Void

    /// Everything `connect` set up, released by `disconnect`. The queue owns the rings
    /// and the event channel (it releases them after its thread exited).
    struct Connection: @unchecked Sendable {
        var queue: VifQueue
        var mapper: any GrantMapper
        var attachment: any NetworkAttachment
    }

    /// Creates the driver of vif `identity`, whose backend directory is `path` and frontend
    /// directory `peerPath`; `attach` makes its attachment at each connect.
    public init(identity: VifIdentity, path: String, peerPath: String, hypervisor: any Hypervisor, store: any XenStoreConnection,
                attach: @escaping AttachmentFactory, logger: Logger = Logger(label: "netback"),
                onRingFailure: @escaping @Sendable (any Error) -> Void = { _ in }) {
        self.onRingFailure = onRingFailure
        self.identity = identity
        self.path = path
        self.peerPath = peerPath
        self.hypervisor = hypervisor
        self.store = store
        self.attach = attach
        self.logger = logger
    }

    /// The running queue's counters, while connected.
    public var counters: VifCounters? { connection.withLock { $0?.queue.counters } }

    /// The figures `xenpv top` shows, while connected.
    public var statistics: [(String, UInt64)]? {
        connection.withLock { c in
            guard let q = c?.queue else { return nil }
            let k = q.counters
            return [("requests", k.txPackets.value + k.rxPackets.value), ("tx_packets", k.txPackets.value),
                    ("rx_packets", k.rxPackets.value), ("bytes", k.txBytes.value + k.rxBytes.value),
                    ("notifies", k.notifies.value), ("sleeps", k.sleeps.value),
                    ("ring_fill", UInt64(q.transmitRingFill)), ("ring_size", UInt64(q.transmitRingSize)),
                    ("rx_buffers", UInt64(q.receiveBuffersPosted)),
                    ("dropped", k.rxDroppedNoBuffers.value + k.txDroppedAttachment.value + k.badGrants.value)]
        }
    }

    /// Advertises netback's features: `feature-sg`, `feature-gso-tcpv4`, `feature-gso-tcpv6`,
    /// `feature-rx-copy`, `feature-split-event-channels` on; `feature-rx-flip`,
    /// `feature-multicast-control` off; `multi-queue-max-queues` 1; then
    /// `hotplug-status` "connected".
    /// - Throws: `XenStoreError` when a write fails.
    public func prepare() async throws {
        for (key, on) in [("feature-sg", true), ("feature-gso-tcpv4", true), ("feature-gso-tcpv6", true),
                          ("feature-rx-copy", true), ("feature-rx-flip", false), ("feature-split-event-channels", true),
                          ("feature-multicast-control", false)] {
            try await store.writeFeature(path, key, on)
        }
        try await store.writeUnsigned(path, "multi-queue-max-queues", 1)
        try await store.write(path + "/hotplug-status", "connected")
    }

    /// Drops any previous connection, reads the frontend's `request-rx-copy`,
    /// `multi-queue-num-queues`, `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or
    /// `event-channel-tx` and `event-channel-rx`), `mac` and features, then maps the rings,
    /// binds the ports, makes the attachment and starts a ``VifQueue``. On a throw nothing
    /// stays mapped or bound.
    /// - Throws: ``NetBackendError`` `.notSupported` when the frontend does not request rx
    ///   copy, `XenstoreValueError` for a missing or malformed key (more than one queue
    ///   included), the hypervisor's errors when a grant does not map or a port does not bind,
    ///   the attachment factory's error, and `RingError` when a ring is already corrupt.
    public func connect() async throws {
        await disconnect()
        let fe = peerPath
        // Only the copying receive path exists (as in Linux since 2013).
        guard try await store.readFeature(fe, XenbusKey.requestRxCopy) else {
            throw NetBackendError(.notSupported, "frontend does not request rx copy; page flipping is not supported")
        }
        // We offer multi-queue-max-queues = 1.
        _ = try await store.readNumber(fe, XenbusKey.multiQueueNumQueues, in: UInt32(1)...1, default: 1)
        let txRef = try await store.readGrantRef(fe, XenbusKey.txRingRef)
        let rxRef = try await store.readGrantRef(fe, XenbusKey.rxRingRef)
        let remotePorts: (tx: EventPort, rx: EventPort)
        if try await store.readIfPresent(fe + "/" + XenbusKey.eventChannelTx) != nil {
            remotePorts = (try await store.readEventPort(fe, XenbusKey.eventChannelTx),
                           try await store.readEventPort(fe, XenbusKey.eventChannelRx))
        } else {
            let port = try await store.readEventPort(fe, XenbusKey.eventChannel)
            remotePorts = (port, port)
        }
        // The toolstack writes the guest's MAC in both directories; ours (dom0's) wins.
        var mac = try await store.readMAC(path, XenbusKey.mac)
        if mac == nil { mac = try await store.readMAC(fe, XenbusKey.mac) }
        let features = VifFrontendFeatures(
            mac: mac.map { MACAddress($0[0], $0[1], $0[2], $0[3], $0[4], $0[5]) },
            scatterGather: try await store.readFeature(fe, XenbusKey.featureSG),
            receiveGSO: Set([
                try await store.readFeature(fe, XenbusKey.featureGSOTCPv4) ? NetGSOType.tcpv4 : nil,
                try await store.readFeature(fe, XenbusKey.featureGSOTCPv6) ? NetGSOType.tcpv6 : nil,
            ].compactMap { $0 }),
            receiveChecksumBlank: !(try await store.readFeature(fe, XenbusKey.featureNoCsumOffload)))
        let attachment = try await attach(identity, features)
        do {
            try connect(txRef: txRef, rxRef: rxRef, remotePorts: remotePorts, features: features, attachment: attachment)
        } catch {
            await (attachment as? TapAttachment)?.close()
            throw error
        }
        logger.info("\(identity): connected (mac \(features.mac.map { "\($0)" } ?? "none"), sg \(features.scatterGather), gso \(features.receiveGSO.map { "\($0)" }.sorted()), csum offload \(features.receiveChecksumBlank))")
    }

    /// Maps, binds, attaches and starts; on any failure releases what it took.
    private func connect(txRef: GrantRef, rxRef: GrantRef, remotePorts: (tx: EventPort, rx: EventPort),
                         features: VifFrontendFeatures, attachment: any NetworkAttachment) throws {
        var cleanup: [() -> Void] = []
        defer { for undo in cleanup.reversed() { undo() } }
        let mapper = try hypervisor.openGrantMapper()
        cleanup.append { mapper.close() }
        let events = try hypervisor.openEventChannels()
        cleanup.append { events.close() }
        let tx = try mapper.map(txRef, from: identity.frontend, writable: true)
        cleanup.append { try? mapper.unmap(tx) }
        let rx = try mapper.map(rxRef, from: identity.frontend, writable: true)
        cleanup.append { try? mapper.unmap(rx) }
        let txPort = try events.bindInterdomain(remote: identity.frontend, remotePort: remotePorts.tx)
        let rxPort = remotePorts.rx == remotePorts.tx
            ? txPort : try events.bindInterdomain(remote: identity.frontend, remotePort: remotePorts.rx)
        let queue = try VifQueue(
            txRing: tx, rxRing: rx, events: events, mapper: mapper, attachment: attachment,
            configuration: VifConfiguration(frontend: identity.frontend, txPort: txPort, rxPort: rxPort,
                                            receiveGSO: features.scatterGather ? features.receiveGSO : [],
                                            receiveChecksumBlank: features.receiveChecksumBlank),
            onFailure: { [identity, logger, store, path, onRingFailure] error in
                logger.error("\(identity): ring failure, resetting the device: \(error)")
                Task { try? await store.write(path + "/error", "ring: \(error)") }
                onRingFailure(error)
            })
        queue.start()
        cleanup.removeAll()
        connection.withLock { $0 = Connection(queue: queue, mapper: mapper, attachment: attachment) }
    }

    /// Stops the queue (it unmaps the rings and unbinds the ports once its thread exited),
    /// closes the grant mapper and a TAP attachment (its device and what its hotplug set up). Idempotent.
    public func disconnect() async {
        guard let c = connection.withLock({ $0.take() }) else { return }
        await c.queue.stopped()
        c.mapper.close()
        await (c.attachment as? TapAttachment)?.close()
        logger.info("\(identity): disconnected")
    }
}
