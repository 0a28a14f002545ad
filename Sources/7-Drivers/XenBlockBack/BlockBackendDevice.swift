import CXen
import Logging
import XenABI
import XenBlockProtocol
import XenBlockStorage
import XenBus
import XenHypervisor
import XenLocks
import XenStore

/// The disk one vbd serves: its size, mode, and how to open an engine on it (one per
/// queue: engines are driven by one thread each).
public struct BlockBackendDisk: Sendable {
    /// The disk's size in bytes; advertised as `sectors` in 512-byte units (any tail below
    /// 512 bytes is not served).
    public var byteCount: UInt64
    /// Whether the frontend may only read: writes, discards and flushes that carry data are
    /// refused, and `info` carries `VDISK_READONLY`.
    public var readOnly: Bool
    /// `physical-sector-size` (e.g. 4096 for an image on a 4K-sector disk).
    public var physicalSectorSize: UInt32
    /// Whether the engine can discard (punch holes); advertised as `feature-discard`.
    public var discard: Bool
    /// Opens one storage engine on the disk; called once per queue at connect.
    public var makeEngine: @Sendable () throws -> any StorageEngine
    /// The most queues (engines) this disk may be served with. 1 where a flush on one
    /// engine does not cover the writes of another: an NBD export without
    /// `NBD_FLAG_CAN_MULTI_CONN`, whose flush covers only its own connection.
    public var maxQueues: Int

    /// Describes a disk of `byteCount` bytes opened per queue by `makeEngine`.
    public init(byteCount: UInt64, readOnly: Bool = false, physicalSectorSize: UInt32 = 512, discard: Bool = true,
                maxQueues: Int = .max, makeEngine: @escaping @Sendable () throws -> any StorageEngine) {
        self.byteCount = byteCount
        self.readOnly = readOnly
        self.physicalSectorSize = physicalSectorSize
        self.discard = discard
        self.maxQueues = maxQueues
        self.makeEngine = makeEngine
    }
}

/// What a backend offers every device.
public struct BlockBackendOptions: Sendable {
    /// `max-ring-page-order`.
    public var maxRingPageOrder: Int = 4
    /// `multi-queue-max-queues`.
    public var maxQueues: Int = 4
    /// `feature-max-indirect-segments` (0: none).
    public var maxIndirectSegments: Int = 256
    /// `feature-persistent`: when the frontend announces it too, each queue keeps up to
    /// `persistentGrants` of its grants mapped and does storage I/O on them directly;
    /// otherwise every segment is grant-copied through bounce pages.
    public var persistent: Bool = true
    /// Mappings kept per queue (Linux blkback's default, `max_persistent_grants`, is 1056).
    public var persistentGrants: Int = 1056
    /// Bounce pages per queue.
    public var bouncePages: Int = 1024

    /// The defaults listed on each property.
    public init() {}
}

/// The backend half of one vbd as a XenBus driver: advertises the disk and features in
/// `prepare`, reads the frontend's ring keys, maps its rings and starts one queue per
/// ring in `connect`, and stops and unmaps everything in `disconnect`.
public final class BlockBackendDevice: XenbusDeviceDriver, @unchecked Sendable {
    // @unchecked: `session` is guarded by its lock; the rest is immutable.
    /// The vbd this driver serves.
    public let device: XenbusDevice
    private let store: any XenStoreConnection
    private let hypervisor: any Hypervisor
    private let disk: BlockBackendDisk
    private let options: BlockBackendOptions
    private let bouncePools: BouncePools
    private let logger: Logger
    /// Called (from a queue thread) when a frontend broke its ring: the device should close.
    public let onRingFailure: @Sendable (any Error) -> Void
    private let session = Locked<Session?>(nil)

    /// Each queue owns its ring mapping and event channel (it releases them after its
    /// thread exited); the session holds only the mapper they share.
    struct Session: @unchecked Sendable {
        var mapper: any GrantMapper
        var queues: [BlockQueue] = []
    }

    /// Creates the driver of `device` serving `disk`; the handshake calls ``prepare()``,
    /// ``connect()`` and ``disconnect()``. Its queues take their bounce pages from
    /// `bouncePools` (a backend's devices share one).
    public init(device: XenbusDevice, store: any XenStoreConnection, hypervisor: any Hypervisor, disk: BlockBackendDisk,
                options: BlockBackendOptions = BlockBackendOptions(), bouncePools: BouncePools = BouncePools(),
                logger: Logger = Logger(label: "blkback"), onRingFailure: @escaping @Sendable (any Error) -> Void = { _ in }) {
        self.bouncePools = bouncePools
        self.device = device
        self.store = store
        self.hypervisor = hypervisor
        self.disk = disk
        self.options = options
        self.logger = logger
        self.onRingFailure = onRingFailure
    }

    /// The queues of the current connection (for counters and tests).
    public var queues: [BlockQueue] { session.withLock { $0?.queues ?? [] } }

    /// The figures `xenpv top` shows, summed over the queues, while connected.
    public var statistics: [(String, UInt64)]? {
        let queues = self.queues
        guard !queues.isEmpty else { return nil }
        func sum(_ k: (BlockQueueCounters) -> UInt64) -> UInt64 { queues.reduce(0) { $0 + k($1.counters) } }
        return [("requests", sum { $0.requests.value }), ("segments", sum { $0.segments.value }),
                ("bytes", sum { $0.bytes.value }), ("notifies", sum { $0.notifies.value }),
                ("sleeps", sum { $0.sleeps.value }), ("ring_fill", UInt64(queues.reduce(0) { $0 + $1.ringFill })),
                ("ring_size", UInt64(queues.reduce(0) { $0 + $1.ringSize })),
                ("dropped", sum { $0.refused.value + $0.badGrants.value + $0.storageErrors.value })]
    }

    /// `multi-queue-max-queues`: the backend's offer, no more than the disk allows.
    var queueLimit: Int { max(1, min(options.maxQueues, disk.maxQueues)) }

    var limits: BlockDeviceLimits {
        BlockDeviceLimits(sectors: disk.byteCount / 512, sectorSize: 512, readOnly: disk.readOnly, flush: true,
                          barrier: true, discard: disk.discard && !disk.readOnly, secureDiscard: false,
                          maxIndirectSegments: options.maxIndirectSegments)
    }

    /// Returns the writes that advertise the disk and the features: `sectors`, `sector-size`
    /// (512), `physical-sector-size`, `info`, `feature-flush-cache`, `feature-barrier`,
    /// `feature-discard` (with `discard-granularity`, `discard-alignment`, `discard-secure`),
    /// `feature-persistent`, `feature-max-indirect-segments`, `max-ring-page-order` and
    /// `multi-queue-max-queues`.
    public func prepare() async throws -> XenbusWrites {
        // The first queue's bounce pages, backed while the frontend is not here yet.
        bouncePools.warm(pages: options.bouncePages)
        let dir = device.backendPath
        let l = limits
        func flag(_ on: Bool) -> String { on ? "1" : "0" }
        var keys: [(String, String)] = [
            (XenbusKey.sectors, String(l.sectors)),
            (XenbusKey.sectorSize, String(l.sectorSize)),
            (XenbusKey.physicalSectorSize, String(disk.physicalSectorSize)),
            (XenbusKey.info, disk.readOnly ? String(VDISK_READONLY) : "0"),
            (XenbusKey.featureFlushCache, flag(l.flush)),
            (XenbusKey.featureBarrier, flag(l.barrier)),
            (XenbusKey.featureDiscard, flag(l.discard)),
        ]
        if l.discard {
            keys += [("discard-granularity", String(disk.physicalSectorSize)), ("discard-alignment", "0"),
                     ("discard-secure", flag(l.secureDiscard))]
        }
        keys += [
            (XenbusKey.featurePersistent, flag(options.persistent)),
            (XenbusKey.featureMaxIndirectSegments, String(options.maxIndirectSegments)),
            (XenbusKey.maxRingPageOrder, String(options.maxRingPageOrder)),
            (XenbusKey.multiQueueMaxQueues, String(queueLimit)),
        ]
        return .entries(keys.map { (dir + "/" + $0.0, $0.1) })
    }

    /// Reads the frontend's `protocol`, `multi-queue-num-queues`, `ring-page-order`, each
    /// queue's `ring-ref<N>` and `event-channel` (under `queue-<N>/` when there are several)
    /// and `feature-persistent`; maps each ring, binds its event channel and starts one
    /// ``BlockQueue`` per ring. On a throw nothing stays mapped or bound.
    /// - Throws: `XenstoreValueError` for a missing or out-of-range key (more queues or a
    ///   larger ring than offered), ``BlockBackendError`` `.notSupported` for an unknown
    ///   `protocol`, the hypervisor's errors when a grant does not map or a port does not bind,
    ///   and `RingError` when a ring's indices are already corrupt.
    public func connect() async throws {
        let fe = device.frontendPath
        // Reads in flight together (each round trip is part of a migrated guest's
        // downtime), awaited in the order they are checked, so a bad key is reported as if
        // read one by one. The ring keys of one queue with a one-page ring, the layout
        // most frontends write, are read with the rest: one round trip in all then, else a
        // second for the keys the layout names.
        async let abiRead = store.readChoice(fe, XenbusKey.protocolName, among: BlkifABI.allCases.map(\.protocolName),
                                             default: BlkifABI.native.protocolName)
        async let queuesRead = store.readNumber(fe, XenbusKey.multiQueueNumQueues, in: 1...UInt32(clamping: queueLimit), default: 1)
        async let orderRead = store.readNumber(fe, XenbusKey.ringPageOrder,
                                               in: 0...UInt32(clamping: max(0, options.maxRingPageOrder)), default: 0)
        async let persistentRead = store.readFeature(fe, XenbusKey.featurePersistent)
        async let singleRingRead = store.readRingRefs(fe, pageCount: 1)
        async let singlePortRead = store.readEventPort(fe, XenbusKey.eventChannel)
        let abiName = try await abiRead
        // Listed by `allCases`, so it parses; the guard keeps this total.
        guard let abi = BlkifABI(protocolName: abiName) else { throw BlockBackendError(.notSupported, "unsupported protocol \(abiName)") }
        let queueCount = Int(try await queuesRead)
        let order = Int(try await orderRead)
        let store = self.store
        let rings: [(refs: [GrantRef], port: EventPort)]
        if queueCount == 1 && order == 0 {
            rings = [(try await singleRingRead, try await singlePortRead)]
        } else {
            rings = try await withThrowingTaskGroup(of: (Int, [GrantRef], EventPort).self) { group in
                for q in 0..<queueCount {
                    let dir = queueCount == 1 ? fe : "\(fe)/queue-\(q)"
                    group.addTask {
                        async let refs = store.readRingRefs(dir, pageCount: 1 << order)
                        async let port = store.readEventPort(dir, XenbusKey.eventChannel)
                        return (q, try await refs, try await port)
                    }
                }
                var read: [(Int, [GrantRef], EventPort)] = []
                for try await r in group { read.append(r) }
                return read.sorted { $0.0 < $1.0 }.map { (refs: $0.1, port: $0.2) }
            }
        }
        let persistent = try await persistentRead
        logger.info("\(device): \(queueCount) queue(s), ring-page-order \(order), \(abi), persistent \(persistent)")

        // Mapping, binding and opening engines block (daemon round trips, system calls): on
        // a thread of their own, so that the process's other handshakes (a vif's reads after
        // a migration) go on meanwhile on the cooperative pool.
        let opened = await onOwnThread(named: "blkback-connect") { [self] in openQueues(rings, abi: abi, persistent: persistent) }
        let s: Session
        switch opened {
        case .success(let made): s = made
        case .failure(let failed):
            if let partial = failed.partial { await Self.release(partial) }
            throw failed.underlying
        }
        for q in s.queues { q.start() }
        session.withLock { $0 = s }
    }

    /// Why ``openQueues(_:abi:persistent:)`` failed, and what it had made (to release).
    private struct OpenFailure: Error {
        let partial: Session?
        let underlying: any Error
    }

    /// Maps each ring, binds its port and builds its queue (not started). Blocks: called
    /// off the pool.
    private func openQueues(_ rings: [(refs: [GrantRef], port: EventPort)], abi: BlkifABI,
                            persistent: Bool) -> Result<Session, OpenFailure> {
        let frontend = device.frontendDomain
        let mapper: any GrantMapper
        do { mapper = try hypervisor.openGrantMapper() } catch { return .failure(OpenFailure(partial: nil, underlying: error)) }
        var s = Session(mapper: mapper)
        do {
            for (refs, remotePort) in rings {
                let map = try s.mapper.map(refs, from: frontend, writable: true)
                let events: any EventChannels
                let port: EventPort
                do {
                    events = try hypervisor.openEventChannels()
                    do { port = try events.bindInterdomain(remote: frontend, remotePort: remotePort) } catch {
                        events.close()
                        throw error
                    }
                } catch {
                    try? s.mapper.unmap(map)
                    throw error
                }
                let failure = onRingFailure
                let queue: BlockQueue
                do {
                    queue = try BlockQueue(
                        ring: map, events: events, mapper: s.mapper, storage: try disk.makeEngine(),
                        configuration: BlockQueueConfiguration(
                            frontend: frontend, port: port, abi: abi, limits: limits, bouncePages: options.bouncePages,
                            persistentGrants: persistent && options.persistent ? options.persistentGrants : 0,
                            bouncePools: bouncePools),
                        onFailure: { failure($0) })
                } catch {
                    // Not taken by a queue: still ours to give back.
                    try? s.mapper.unmap(map)
                    try? events.unbind(port)
                    events.close()
                    throw error
                }
                s.queues.append(queue)
            }
            return .success(s)
        } catch {
            return .failure(OpenFailure(partial: s, underlying: error))
        }
    }

    /// Stops every queue (each finishes what is at the engine and exits), then unmaps the
    /// rings and unbinds the ports. Idempotent.
    public func disconnect() async {
        guard let s = session.withLock({ s in defer { s = nil }; return s }) else { return }
        await Self.release(s)
    }

    /// Each queue gives back its ring and port once its thread exited; then the mapper.
    private static func release(_ s: Session) async {
        for q in s.queues { await q.stopped() }
        s.mapper.close()
    }
}
