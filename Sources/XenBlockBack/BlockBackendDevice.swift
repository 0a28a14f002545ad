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
    public var byteCount: UInt64
    public var readOnly: Bool
    /// `physical-sector-size` (e.g. 4096 for an image on a 4K-sector disk).
    public var physicalSectorSize: UInt32
    /// Whether the engine can discard (punch holes); advertised as `feature-discard`.
    public var discard: Bool
    public var makeEngine: @Sendable () throws -> any StorageEngine

    public init(byteCount: UInt64, readOnly: Bool = false, physicalSectorSize: UInt32 = 512, discard: Bool = true,
                makeEngine: @escaping @Sendable () throws -> any StorageEngine) {
        self.byteCount = byteCount
        self.readOnly = readOnly
        self.physicalSectorSize = physicalSectorSize
        self.discard = discard
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

    public init() {}
}

/// Why a backend refused a frontend's keys.
public struct BlockBackendError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The backend half of one vbd as a XenBus driver: advertises the disk and features in
/// `prepare`, reads the frontend's ring keys, maps its rings and starts one queue per
/// ring in `connect`, and stops and unmaps everything in `disconnect`.
public final class BlockBackendDevice: XenbusDeviceDriver, @unchecked Sendable {
    // @unchecked: `session` is guarded by its lock; the rest is immutable.
    public let device: XenbusDevice
    private let store: any XenStoreConnection
    private let hypervisor: any Hypervisor
    private let disk: BlockBackendDisk
    private let options: BlockBackendOptions
    private let logger: Logger
    /// Called (from a queue thread) when a frontend broke its ring: the device should close.
    public let onRingFailure: @Sendable (any Error) -> Void
    private let session = Locked<Session?>(nil)

    struct Session: @unchecked Sendable {
        var mapper: any GrantMapper
        var maps: [GrantMapping] = []
        var events: [(any EventChannels, EventPort)] = []
        var queues: [BlockQueue] = []
    }

    public init(device: XenbusDevice, store: any XenStoreConnection, hypervisor: any Hypervisor, disk: BlockBackendDisk,
                options: BlockBackendOptions = BlockBackendOptions(), logger: Logger = Logger(label: "blkback"),
                onRingFailure: @escaping @Sendable (any Error) -> Void = { _ in }) {
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

    var limits: BlockDeviceLimits {
        BlockDeviceLimits(sectors: disk.byteCount / 512, sectorSize: 512, readOnly: disk.readOnly, flush: true,
                          barrier: true, discard: disk.discard && !disk.readOnly, secureDiscard: false,
                          maxIndirectSegments: options.maxIndirectSegments)
    }

    public func prepare() async throws {
        let dir = device.backendPath
        let l = limits
        try await store.inTransaction { tx in
            try await tx.writeUnsigned(dir, XenbusKey.sectors, l.sectors)
            try await tx.writeUnsigned(dir, XenbusKey.sectorSize, UInt64(l.sectorSize))
            try await tx.writeUnsigned(dir, XenbusKey.physicalSectorSize, UInt64(disk.physicalSectorSize))
            try await tx.writeUnsigned(dir, XenbusKey.info, disk.readOnly ? UInt64(VDISK_READONLY) : 0)
            try await tx.writeFeature(dir, XenbusKey.featureFlushCache, l.flush)
            try await tx.writeFeature(dir, XenbusKey.featureBarrier, l.barrier)
            try await tx.writeFeature(dir, XenbusKey.featureDiscard, l.discard)
            if l.discard {
                try await tx.writeUnsigned(dir, "discard-granularity", UInt64(disk.physicalSectorSize))
                try await tx.writeUnsigned(dir, "discard-alignment", 0)
                try await tx.writeFeature(dir, "discard-secure", l.secureDiscard)
            }
            try await tx.writeFeature(dir, XenbusKey.featurePersistent, options.persistent)
            try await tx.writeUnsigned(dir, XenbusKey.featureMaxIndirectSegments, UInt64(options.maxIndirectSegments))
            try await tx.writeUnsigned(dir, XenbusKey.maxRingPageOrder, UInt64(options.maxRingPageOrder))
            try await tx.writeUnsigned(dir, XenbusKey.multiQueueMaxQueues, UInt64(options.maxQueues))
        }
    }

    public func connect() async throws {
        let fe = device.frontendPath
        let frontend = device.frontendDomain
        let abiName = try await store.readString(fe, XenbusKey.protocolName, default: BlkifABI.native.protocolName)
        guard let abi = BlkifABI(protocolName: abiName) else { throw BlockBackendError("unsupported protocol \(abiName)") }
        // Checked as the guest wrote them (UInt64) before narrowing: Int(_:) of a value
        // past Int.max would trap dom0's process (found by Fuzz/ fuzz-xenbus).
        let queueValue = try await store.readUnsigned(fe, XenbusKey.multiQueueNumQueues, default: 1)
        guard queueValue >= 1 && queueValue <= UInt64(options.maxQueues) else {
            throw BlockBackendError("multi-queue-num-queues \(queueValue) outside 1...\(options.maxQueues)")
        }
        let queueCount = Int(queueValue)
        let orderValue = try await store.readUnsigned(fe, XenbusKey.ringPageOrder, default: 0)
        guard orderValue <= UInt64(options.maxRingPageOrder) else {
            throw BlockBackendError("ring-page-order \(orderValue) above max-ring-page-order \(options.maxRingPageOrder)")
        }
        let order = Int(orderValue)
        var rings: [(refs: [GrantRef], port: EventPort)] = []
        for q in 0..<queueCount {
            let dir = queueCount == 1 ? fe : "\(fe)/queue-\(q)"
            var refs: [GrantRef] = []
            if order == 0 {
                guard let text = try await store.readIfPresent(dir + "/" + XenbusKey.ringRef), let v = UInt32(text) else {
                    throw BlockBackendError("\(dir)/ring-ref missing or malformed")
                }
                refs.append(GrantRef(v))
            } else {
                for i in 0..<(1 << order) {
                    guard let text = try await store.readIfPresent("\(dir)/ring-ref\(i)"), let v = UInt32(text) else {
                        throw BlockBackendError("\(dir)/ring-ref\(i) missing or malformed")
                    }
                    refs.append(GrantRef(v))
                }
            }
            guard let text = try await store.readIfPresent(dir + "/" + XenbusKey.eventChannel), let port = UInt32(text) else {
                throw BlockBackendError("\(dir)/event-channel missing or malformed")
            }
            rings.append((refs, EventPort(port)))
        }
        let persistent = try await store.readFeature(fe, XenbusKey.featurePersistent)
        logger.info("\(device): \(queueCount) queue(s), ring-page-order \(order), \(abi), persistent \(persistent)")

        var s = Session(mapper: try hypervisor.openGrantMapper())
        do {
            for (refs, remotePort) in rings {
                let map = try s.mapper.map(refs, from: frontend, writable: true)
                s.maps.append(map)
                let events = try hypervisor.openEventChannels()
                let port: EventPort
                do { port = try events.bindInterdomain(remote: frontend, remotePort: remotePort) } catch {
                    events.close()
                    throw error
                }
                s.events.append((events, port))
                let failure = onRingFailure
                let queue = try BlockQueue(
                    ring: map.memory, events: events, mapper: s.mapper, storage: try disk.makeEngine(),
                    configuration: BlockQueueConfiguration(
                        frontend: frontend, port: port, abi: abi, limits: limits, bouncePages: options.bouncePages,
                        persistentGrants: persistent && options.persistent ? options.persistentGrants : 0),
                    onFailure: { failure($0) })
                s.queues.append(queue)
            }
        } catch {
            let failed = s
            await offPool { Self.release(failed) }
            throw error
        }
        for q in s.queues { q.start() }
        session.withLock { $0 = s }
    }

    public func disconnect() async {
        guard let s = session.withLock({ s in defer { s = nil }; return s }) else { return }
        await offPool { Self.release(s) }
    }

    private static func release(_ s: Session) {
        for q in s.queues { q.stop(timeout: 10) }
        for m in s.maps { try? s.mapper.unmap(m) }
        for (events, port) in s.events {
            try? events.unbind(port)
            events.close()
        }
        s.mapper.close()
    }
}
