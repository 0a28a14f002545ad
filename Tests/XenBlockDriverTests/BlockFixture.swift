import DriverTestSupport
import CXen
import Foundation
import Glibc
import SystemPackage
import TestSupport
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenHypervisor
import XenRing
import XenSimulator

/// The kernel's name of the calling thread (`/proc/thread-self/comm`, newline trimmed).
func currentThreadName() -> String {
    (procFile("/proc/thread-self/comm") ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A guest and dom0 on the simulator wired as a vbd is, without xenstore: the guest
/// shares each queue's ring and pool, dom0 maps the rings and binds the ports, one
/// blkback queue per ring serves a storage engine, and the guest's frontend runs on top.
final class BlockFixture: @unchecked Sendable {
    struct Backend {
        var events: any EventChannels
        var port: EventPort
        var ringMap: GrantMapping
        /// Owns the three above from its start.
        var queue: BlockQueue
    }

    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let sharer: any GrantSharer
    /// dom0's mapper, watched: tests see every unmap as it happens.
    let mapper: WatchingMapper
    let limits: BlockDeviceLimits
    let frontend = BlockFrontend()
    var resources: [BlockFrontQueueResources] = []
    var backends: [Backend] = []
    let ringPageOrder: Int
    let queueCount: Int
    let makeStorage: (Int) throws -> any StorageEngine
    let abi: BlkifABI
    /// blkback's persistent-grant mappings per queue (0: grant copy).
    let persistentGrants: Int
    /// ``BlockQueueConfiguration/contiguousCopies``.
    let contiguousCopies: Bool?

    /// One queue over `bytes` of memory, with up to 32 indirect segments.
    static func inMemory(bytes: Int) throws -> BlockFixture {
        try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 32)) { _ in
            try MemoryStorage(byteCount: bytes)
        }
    }

    init(queues: Int = 1, ringPageOrder: Int = 0, limits: BlockDeviceLimits, abi: BlkifABI = .native,
         persistentGrants: Int = 0, contiguousCopies: Bool? = nil,
         storage: @escaping (Int) throws -> any StorageEngine) throws {
        guest = try hv.createDomain(frames: 8192, grantFrames: 64)
        sharer = try guest.openGrantSharer()
        mapper = WatchingMapper(try hv.dom0.openGrantMapper())
        self.limits = limits
        self.ringPageOrder = ringPageOrder
        self.queueCount = queues
        self.makeStorage = storage
        self.abi = abi
        self.persistentGrants = persistentGrants
        self.contiguousCopies = contiguousCopies
    }

    deinit {
        // A test that failed before teardown: end the queue threads before the
        // hypervisor's memory goes, or they fault on it and take every other test along.
        frontend.detach()
        for b in backends { b.queue.stop() }
    }

    var info: BlockDeviceInfo {
        BlockDeviceInfo(sectors: limits.sectors, sectorSize: limits.sectorSize, readOnly: limits.readOnly,
                        flush: limits.flush, barrier: limits.barrier, discard: limits.discard,
                        maxIndirectSegments: limits.maxIndirectSegments)
    }

    /// Shares the guest's side of every queue (rings initialised) and binds dom0's ends.
    func shareAndMap(poolPages: Int = 512) throws {
        for _ in 0..<queueCount {
            let r = try BlockFrontQueueResources.allocate(hypervisor: guest, sharer: sharer, backend: .dom0,
                                                           ringPageOrder: ringPageOrder, poolPages: poolPages)
            resources.append(r)
        }
    }

    /// Starts a blkback queue on each shared ring.
    func startBackend(onFailure: (@Sendable (Int, any Error) -> Void)? = nil) throws {
        for (i, r) in resources.enumerated() {
            let events = try hv.dom0.openEventChannels()
            let port = try events.bindInterdomain(remote: guest.domainID, remotePort: r.port)
            let map = try mapper.map(r.ring.refs, from: guest.domainID, writable: true)
            let q = try BlockQueue(ring: map, events: events, mapper: mapper, storage: try makeStorage(i),
                                   configuration: BlockQueueConfiguration(frontend: guest.domainID, port: port, abi: abi, limits: limits,
                                                                          persistentGrants: persistentGrants,
                                                                          contiguousCopies: contiguousCopies),
                                   onFailure: onFailure.map { f in { @Sendable e in f(i, e) } })
            q.start()
            backends.append(Backend(events: events, port: port, ringMap: map, queue: q))
        }
    }

    /// Stops dom0's queues and releases its side.
    func stopBackend() throws {
        for b in backends {
            b.queue.stop()
        }
        backends = []
    }

    /// Everything up: share, map, serve, attach the frontend.
    func start() throws {
        try shareAndMap()
        try startBackend()
        try frontend.attach(resources, info: info)
    }

    /// Stops everything and returns the simulator's leftovers.
    func teardown() throws -> Leftovers {
        frontend.detach()
        frontend.shutdown()
        try stopBackend()
        for r in resources { precondition(r.release(sharer: sharer)) }
        resources = []
        mapper.close()
        sharer.close()
        return hv.shutdown()
    }
}

/// The block driver tests' image: a file engine on it (libaio unless asked).
extension TemporaryImage {
    func storage(readOnly: Bool = false, engine: FileEngineKind = .libaio) throws -> any StorageEngine {
        try engine.open(FilePath(path), readOnly: readOnly, directIO: .preferred, queueDepth: 64)
    }
}

/// Random bytes, fast in debug builds (64 bits at a time).
func randomBytes<G: RandomNumberGenerator>(_ count: Int, using g: inout G) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= count {
            raw.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count { raw[i] = UInt8(truncatingIfNeeded: g.next()); i += 1 }
    }
    return out
}

/// Random reads and writes from `tasks` concurrent callers, checked against a shadow.
/// Sizes are 512 B to `maxBytes` in sectors; every read is compared with what the
/// shadow holds (ranges are partitioned per task, so callers never race on one byte).
func shadowWorkout(_ frontend: BlockFrontend, deviceBytes: Int, operations: Int, maxBytes: Int = 1 << 20,
                   tasks: Int = 4, seed: UInt64 = 1) async throws {
    let region = deviceBytes / tasks / 512 * 512
    try await withThrowingTaskGroup(of: Void.self) { group in
        for t in 0..<tasks {
            group.addTask {
                var g = SplitMix(seed: seed &* 7919 &+ UInt64(t))
                let base = t * region
                var shadow = try await frontend.read(at: UInt64(base), count: region)
                for _ in 0..<operations {
                    let sectors = Int.random(in: 1...(min(maxBytes, region) / 512), using: &g)
                    let length = sectors * 512
                    let start = Int.random(in: 0...((region - length) / 512), using: &g) * 512
                    if Bool.random(using: &g) {
                        let data = randomBytes(length, using: &g)
                        try await frontend.write(at: UInt64(base + start), data)
                        shadow.replaceSubrange(start..<start + length, with: data)
                    } else {
                        let got = try await frontend.read(at: UInt64(base + start), count: length)
                        guard got[...] == shadow[start..<start + length] else {
                            throw ShadowMismatch(offset: base + start, length: length)
                        }
                    }
                }
                let whole = try await frontend.read(at: UInt64(base), count: region)
                guard whole == shadow else { throw ShadowMismatch(offset: base, length: region) }
            }
        }
        try await group.waitForAll()
    }
}

struct ShadowMismatch: Error, CustomStringConvertible {
    let offset: Int
    let length: Int
    var description: String { "read of \(length) bytes at \(offset) differs from the shadow copy" }
}
