import CXen
import Foundation
import Glibc
import NBDProtocol
import Synchronization
import SystemPackage
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenHypervisor
import XenSimulator

/// What `xenpv bench block` measures: the whole block path on the simulator, frontend →
/// ring → backend → io_uring or libaio on an image file.
public struct BlockBenchmarkConfiguration: Sendable {
    /// The access pattern, as fio's `--rw` names it.
    public enum Pattern: String, Sendable, CaseIterable {
        /// Random or sequential reads or writes of ``blockSize`` bytes.
        case randread, randwrite, read, write
        var isRead: Bool { self == .randread || self == .read }
        var isRandom: Bool { self == .randread || self == .randwrite }
    }

    /// The image file or block device to run on, or ``memoryImage``.
    public var image: String
    /// The access pattern; reads open the image read-only.
    public var pattern: Pattern = .randread
    /// Bytes per operation (a multiple of 512).
    public var blockSize = 4096
    /// Operations in flight (one caller task each).
    public var queueDepth = 1
    /// How long to run, in seconds (every caller completes at least one operation).
    public var seconds = 3.0
    /// `O_DIRECT` on the image (as fio's `--direct=1`).
    public var direct = true
    /// blkback keeps the frontend's grants mapped (`feature-persistent`, the default on
    /// both sides) instead of grant-copying each segment.
    public var persistentGrants = true
    /// Reads hand the data to the caller in place (no copy into its buffer).
    public var inPlace = false
    /// The callers are chains of `startRead`/`startWrite` callbacks on blkfront's queue
    /// thread instead of tasks awaiting `read`/`write` (not with ``inPlace``).
    public var callbacks = false
    /// The storage engine on the image file (io_uring where the kernel allows it).
    public var engine = FileEngineKind.preferred.kind
    /// io_uring only: a kernel thread polls the submission ring, idle after this long (nil: off).
    public var sqPollIdle: Duration?

    /// 4 KiB random reads at queue depth 1 for 3 s on `image`, `O_DIRECT`, persistent grants, reads copied.
    public init(image: String) { self.image = image }

    /// An `image` naming a 256 MiB in-memory disk instead of a file: the driver path alone.
    public static let memoryImage = ":memory:"
}

/// Figures of one run.
public struct BlockBenchmarkResult: Sendable {
    /// The configuration of the run.
    public var configuration: BlockBenchmarkConfiguration
    /// Operations completed by all callers.
    public var operations: Int
    /// Wall-clock seconds from the first submission to the last completion.
    public var elapsed: Double
    /// Median latency in µs, from the caller's call to its completion (as fio's `lat`).
    public var p50Microseconds: Double
    /// 99th-percentile latency in µs.
    public var p99Microseconds: Double
    /// Mean latency in µs.
    public var meanMicroseconds: Double
    /// Whether the image was opened with `O_DIRECT`.
    public var directIO: Bool
    /// Per ring request: notifications each way and sleeps of the backend thread (how
    /// many thread wake-ups the path cost).
    public var frontendNotifiesPerRequest = 0.0
    /// Notifications blkback sent per ring request.
    public var backendNotifiesPerRequest = 0.0
    /// Sleeps of blkback's queue thread per ring request.
    public var backendSleepsPerRequest = 0.0
    /// Sleeps of blkfront's queue thread per ring request.
    public var frontendSleepsPerRequest = 0.0
    /// Storage buffers (iovecs) blkback handed the engine per data request.
    public var buffersPerRequest = 0.0
    /// Persistent-grant pages blkback mapped, and unmapped to make room, over the run.
    public var grantMaps: UInt64 = 0
    /// Persistent-grant pages blkback unmapped to make room for others, over the run.
    public var grantEvictions: UInt64 = 0
    /// CPU time (user + system) of the whole process, every thread (the kernel's io_uring
    /// workers included), over the measured interval.
    public var cpuSeconds = 0.0

    /// CPU µs per operation: what the path costs per I/O, beside ``iops``.
    public var cpuMicrosecondsPerOperation: Double { operations > 0 ? cpuSeconds * 1e6 / Double(operations) : 0 }

    /// Operations per second.
    public var iops: Double { Double(operations) / elapsed }
    /// Bytes moved per second, in MiB/s (2^20 bytes).
    public var mibPerSecond: Double { iops * Double(configuration.blockSize) / 1_048_576 }

    /// One JSON object: `iops`, `mib_per_second`, `p50_us`, `p99_us` and the settings.
    public var json: String {
        let c = configuration
        return """
            {"engine":"\(engineName)","sq_poll":\(c.sqPollIdle != nil),"rw":"\(c.pattern.rawValue)","bs":\(c.blockSize),"queue_depth":\(c.queueDepth),"seconds":\(fmt(elapsed)),\
            "direct":\(directIO),"persistent_grants":\(c.persistentGrants),"in_place":\(c.inPlace),"callbacks":\(c.callbacks),"operations":\(operations),"iops":\(fmt(iops)),"mib_per_second":\(fmt(mibPerSecond)),\
            "mean_us":\(fmt(meanMicroseconds)),"p50_us":\(fmt(p50Microseconds)),"p99_us":\(fmt(p99Microseconds)),\
            "frontend_notifies_per_request":\(fmt(frontendNotifiesPerRequest, 3)),\
            "backend_notifies_per_request":\(fmt(backendNotifiesPerRequest, 3)),\
            "backend_sleeps_per_request":\(fmt(backendSleepsPerRequest, 3)),\
            "frontend_sleeps_per_request":\(fmt(frontendSleepsPerRequest, 3)),\
            "buffers_per_request":\(fmt(buffersPerRequest, 2)),"grant_maps":\(grantMaps),"grant_evictions":\(grantEvictions),\
            "cpu_seconds":\(fmt(cpuSeconds, 3)),"cpu_us_per_op":\(fmt(cpuMicrosecondsPerOperation, 2))}
            """
    }

    /// One line for a person, with the figures and the settings.
    public var summary: String {
        let c = configuration
        return "\(engineName) \(c.pattern.rawValue) bs=\(c.blockSize) qd=\(c.queueDepth): \(fmt(iops)) IOPS, \(fmt(mibPerSecond)) MiB/s, "
            + "CPU \(fmt(cpuMicrosecondsPerOperation, 2)) µs/op, "
            + "latency p50 \(fmt(p50Microseconds)) µs, p99 \(fmt(p99Microseconds)) µs (\(operations) ops in \(fmt(elapsed)) s"
            + (directIO ? ", O_DIRECT" : ", buffered") + (c.persistentGrants ? ", persistent grants" : ", grant copy")
            + (c.inPlace ? ", reads in place" : "") + (c.callbacks ? ", callbacks)" : ")")
            + "; per request: notifies \(fmt(frontendNotifiesPerRequest, 3)) → \(fmt(backendNotifiesPerRequest, 3)) ←, "
            + "sleeps: backend \(fmt(backendSleepsPerRequest, 3)), frontend \(fmt(frontendSleepsPerRequest, 3)), "
            + "storage buffers \(fmt(buffersPerRequest, 2)); grant pages mapped \(grantMaps), evicted \(grantEvictions)"
    }

    private var engineName: String {
        configuration.image == BlockBenchmarkConfiguration.memoryImage ? "memory"
            : NBDURI.looksLikeURI(configuration.image) ? "nbd" : configuration.engine.rawValue
    }

    private func fmt(_ v: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", v) }
}

/// Why a benchmark could not run.
public struct BlockBenchmarkError: Error, CustomStringConvertible {
    /// What was wrong (a setting out of range, an image that cannot be read).
    public var message: String
    /// The message.
    public var description: String { message }
}

/// Runs the block path end to end on the simulator and measures it.
public enum BlockBenchmark {
    /// Sets up a guest and dom0 on a fresh simulator with blkfront, blkback and the storage engine, runs ``BlockBenchmarkConfiguration/queueDepth`` callers on the frontend's executor until the time is up, tears everything down, and reports. Throws ``BlockBenchmarkError`` for settings out of range (block size a multiple of 512 up to 1 MiB, queue depth 1...128) or an unusable image, or the error of set-up or of an operation.
    public static func run(_ c: BlockBenchmarkConfiguration) async throws -> BlockBenchmarkResult {
        guard c.blockSize >= 512, c.blockSize % 512 == 0, c.blockSize <= 1 << 20 else {
            throw BlockBenchmarkError(message: "--bs must be a multiple of 512 up to 1 MiB")
        }
        guard c.queueDepth >= 1, c.queueDepth <= 128 else { throw BlockBenchmarkError(message: "--queue-depth must be 1...128") }
        guard !(c.callbacks && c.inPlace) else { throw BlockBenchmarkError(message: "reads in place have no callback form") }
        let inMemory = c.image == BlockBenchmarkConfiguration.memoryImage
        // An NBD export's URI: the engine is NBDStorage, the device its export.
        var remote: NBDStorage? = nil
        if NBDURI.looksLikeURI(c.image) {
            let uri: NBDURI
            do { uri = try NBDURI(parsing: c.image) } catch { throw BlockBenchmarkError(message: "\(c.image): \(error)") }
            remote = try NBDStorage(uri: uri, readOnly: c.pattern.isRead, queueDepth: max(64, c.queueDepth))
        }
        var st = stat()
        if inMemory {
            st.st_size = 256 << 20
        } else if let remote {
            st.st_size = off_t(clamping: remote.byteCount)
        } else {
            guard stat(c.image, &st) == 0 else { throw BlockBenchmarkError(message: "cannot stat \(c.image): errno \(errno)") }
        }
        let size = UInt64(st.st_size) / UInt64(c.blockSize) * UInt64(c.blockSize)
        guard size >= UInt64(c.blockSize) else { throw BlockBenchmarkError(message: "\(c.image) is smaller than one block") }

        let pagesPerOp = (c.blockSize + XenPage.size - 1) / XenPage.size
        let inFlightPages = c.queueDepth * pagesPerOp
        let poolPages = max(512, inFlightPages + 256)
        // A ring with a slot per caller (order 2 holds 128 requests).
        let order = c.queueDepth <= 32 ? 0 : (c.queueDepth <= 64 ? 1 : 2)
        let indirect = pagesPerOp > BlockDeviceLimits.maxDirectSegments ? min(256, max(pagesPerOp, 32)) : 32

        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: poolPages + 512 + 64, grantFrames: 64)
        let sharer = try guest.openGrantSharer()
        let mapper = try hv.dom0.openGrantMapper()
        let storage: any StorageEngine
        let direct: Bool
        if inMemory {
            storage = try MemoryStorage(byteCount: Int(size), queueDepth: max(64, c.queueDepth))
            direct = false
        } else if let remote {
            storage = remote
            direct = false
        } else {
            let file = try c.engine.open(FilePath(c.image), readOnly: c.pattern.isRead,
                                         directIO: c.direct ? .required : .never, queueDepth: max(64, c.queueDepth),
                                         sqPollIdle: c.sqPollIdle)
            direct = file.ioMode == .direct
            storage = file
        }
        let resources = try BlockFrontQueueResources.allocate(hypervisor: guest, sharer: sharer, backend: .dom0,
                                                               ringPageOrder: order, poolPages: poolPages)
        let events = try hv.dom0.openEventChannels()
        let port = try events.bindInterdomain(remote: guest.domainID, remotePort: resources.port)
        let map = try mapper.map(resources.ring.refs, from: guest.domainID, writable: true)
        let limits = BlockDeviceLimits(sectors: size / 512, readOnly: c.pattern.isRead, maxIndirectSegments: indirect)
        let backCounters = BlockQueueCounters()
        let queue = try BlockQueue(ring: map, events: events, mapper: mapper, storage: storage,
                                   configuration: BlockQueueConfiguration(frontend: guest.domainID, port: port, limits: limits,
                                                                          bouncePages: max(1024, inFlightPages + 256),
                                                                          persistentGrants: c.persistentGrants ? 1056 : 0),
                                   counters: backCounters)
        queue.start()
        let frontend = BlockFrontend()
        try frontend.attach([resources], info: BlockDeviceInfo(sectors: size / 512, readOnly: c.pattern.isRead,
                                                               maxIndirectSegments: indirect))
        // Awaited, not deferred: waiting for the queue threads must not hold a thread of
        // the cooperative pool.
        func release() async {
            await frontend.detached()
            frontend.shutdown()
            await queue.stopped()
            resources.release(sharer: sharer)
            mapper.close()
            sharer.close()
            _ = hv.shutdown()
        }
        do {
            let blocks = size / UInt64(c.blockSize)
            let cursor = Cursor()
            let cpuBefore = Self.processCPUSeconds()
            let start = ContinuousClock.now
            let deadline = start + .milliseconds(Int(c.seconds * 1000))
            let samples = c.callbacks
                ? try await CallbackCallers.run(frontend, c, blocks: blocks, cursor: cursor,
                                                deadline: cxen_monotonic_ns() &+ UInt64(c.seconds * 1e9))
                : try await withThrowingTaskGroup(of: [UInt32].self) { group in
                for worker in 0..<c.queueDepth {
                    // On the queue thread: requests and answers skip two wake-ups each.
                    group.addTask(executorPreference: frontend.executor) {
                        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: c.blockSize, alignment: 4096)
                        defer { buffer.deallocate() }
                        for i in 0..<c.blockSize { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ worker) }
                        var g = BenchGenerator(state: UInt64(worker) &* 0x9E37_79B9_7F4A_7C15 &+ cxen_monotonic_ns())
                        var latencies: [UInt32] = []
                        latencies.reserveCapacity(1 << 16)
                        // At least one operation each, even if the task starts after the deadline.
                        repeat {
                            let block = c.pattern.isRandom ? UInt64.random(in: 0..<blocks, using: &g) : cursor.next() % blocks
                            let offset = block * UInt64(c.blockSize)
                            let t0 = cxen_monotonic_ns()
                            if c.pattern.isRead && c.inPlace {
                                // fio does not look at what it reads; nor does this consumer.
                                try await frontend.read(at: offset, count: c.blockSize) { _, _ in }
                            } else if c.pattern.isRead {
                                try await frontend.read(at: offset, into: buffer)
                            } else {
                                try await frontend.write(at: offset, from: UnsafeRawBufferPointer(buffer))
                            }
                            let ns = cxen_monotonic_ns() - t0
                            latencies.append(UInt32(clamping: ns / 10))  // units of 10 ns
                        } while ContinuousClock.now < deadline
                        return latencies
                    }
                }
                var all: [UInt32] = []
                for try await l in group { all += l }
                return all
            }
            // One reading of the clock: two could fall either side of a second.
            let took = (ContinuousClock.now - start).components
            let elapsed = Double(took.seconds) + Double(took.attoseconds) / 1e18
            let cpu = Self.processCPUSeconds() - cpuBefore
            guard !samples.isEmpty else { throw BlockBenchmarkError(message: "no operation completed") }
            let sorted = samples.sorted()
            func percentile(_ p: Double) -> Double {
                Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 100
            }
            let mean = Double(sorted.reduce(0) { $0 + UInt64($1) }) / Double(sorted.count) / 100
            let requests = Double(max(1, backCounters.requests.value))
            let frontNotifies = frontend.counters.reduce(0) { $0 + $1.notifies.load(ordering: .relaxed) }
            let frontSleeps = frontend.counters.reduce(0) { $0 + $1.sleeps.load(ordering: .relaxed) }
            let result = BlockBenchmarkResult(configuration: c, operations: samples.count, elapsed: elapsed,
                                                    p50Microseconds: percentile(0.5), p99Microseconds: percentile(0.99),
                                              meanMicroseconds: mean, directIO: direct,
                                              frontendNotifiesPerRequest: Double(frontNotifies) / requests,
                                              backendNotifiesPerRequest: Double(backCounters.notifies.value) / requests,
                                              backendSleepsPerRequest: Double(backCounters.sleeps.value) / requests,
                                              frontendSleepsPerRequest: Double(frontSleeps) / requests,
                                              buffersPerRequest: Double(backCounters.buffers.value) / requests,
                                              grantMaps: backCounters.grantMaps.value, grantEvictions: backCounters.grantEvictions.value,
                                              cpuSeconds: cpu)
            await release()
            return result
        } catch {
            await release()
            throw error
        }
    }
}

extension BlockBenchmark {
    /// User + system time of every thread of this process so far (`getrusage(RUSAGE_SELF)`).
    static func processCPUSeconds() -> Double {
        var u = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &u) == 0 else { return 0 }
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
}

/// The next block of a sequential run, shared by the callers (one stream, as fio's).
final class Cursor: Sendable {
    private let value = Atomic<UInt64>(0)
    // Relaxed: only the count matters; no other memory is published through it.
    func next() -> UInt64 { value.add(1, ordering: .relaxed).oldValue }
}

/// SplitMix64: offsets without a system call per operation (the system generator
/// reads `getrandom`).
struct BenchGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
