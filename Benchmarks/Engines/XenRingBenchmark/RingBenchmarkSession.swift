import Atomics
import CXen
import Glibc
import XenABI
import XenHypervisor
import XenRing

/// The ring this benchmark drives: blkif, the ring of ringbench.c.
public typealias BlkifFrontRing = FrontRing<blkif_request, blkif_response>
/// The backend's view of the same ring.
public typealias BlkifBackRing = BackRing<blkif_request, blkif_response>

/// The two halves of the benchmark as loops any thread can run: the
/// session's threads run them, and so does `xenpv bench ring-processes`,
/// which puts each half in its own process, so both compare like with like.
public enum RingBenchmarkLoop {}

/// One ring-throughput run between two domains, set up like a real split
/// driver: the frontend shares one page and allocates an unbound event
/// channel; the backend maps the grant and binds to the port. Then a
/// frontend thread produces blkif requests and a backend thread copies each
/// one out and answers it, exactly as `shared/reference/ringbench.c` does.
///
/// `init` does everything that allocates, threads included; `run` only
/// exchanges requests, so a malloc counter around `run` sees the data path.
public final class RingBenchmarkSession: @unchecked Sendable {
    // @unchecked: the two threads touch disjoint state (each its own ring
    // view, event handle and statistics) and the set-up is read-only for
    // them; results are read after both are joined.
    /// The configuration this session runs.
    public let configuration: RingBenchmarkConfiguration
    let sharer: any GrantSharer
    let mapper: any GrantMapper
    let shared: SharedPages
    let mapping: GrantMapping
    let frontEvents: any EventChannels
    let backEvents: any EventChannels
    let frontPort: EventPort
    let backPort: EventPort
    let ringEntries: UInt32
    let queueDepth: UInt32
    let frontDomain: DomainID
    let backDomain: DomainID
    /// Set by a side that failed, so the other stops waiting.
    let abort = ManagedAtomic<Bool>(false)
    /// The backend thread's CPU clock, for the idle probe.
    let backClock = ManagedAtomic<Int32>(-1)

    var frontStats = RingSideStatistics()
    var backStats = RingSideStatistics()
    var frontError: RingBenchmarkError?
    var backError: RingBenchmarkError?
    var elapsed = 0.0
    var idleBackCPU: Double?
    var idleSeconds: Double?
    var checksum: UInt64 = 0
    private var closed = false
    private var ran = false
    let start = StartGate()
    private var front: BenchmarkThread?
    private var back: BenchmarkThread?

    /// Shares, maps and binds everything a run needs.
    public init(configuration: RingBenchmarkConfiguration, frontend: any Hypervisor, backend: any Hypervisor) throws(RingBenchmarkError) {
        self.configuration = configuration
        frontDomain = frontend.domainID
        backDomain = backend.domainID
        do throws(HypervisorError) {
            sharer = try frontend.openGrantSharer()
            mapper = try backend.openGrantMapper()
            shared = try sharer.sharePages(count: 1, with: backend.domainID, writable: true)
            mapping = try mapper.map(shared.refs[0], from: frontend.domainID, writable: true)
            frontEvents = try frontend.openEventChannels()
            backEvents = try backend.openEventChannels()
            frontPort = try frontEvents.bindUnbound(remote: backend.domainID)
            backPort = try backEvents.bindInterdomain(remote: frontend.domainID, remotePort: frontPort)
        } catch {
            throw RingBenchmarkError(.setup, "setting up the ring between \(frontend.domainID) and \(backend.domainID): \(error)")
        }
        do throws(RingError) {
            // Only the frontend initialises the shared page (SHARED_RING_INIT).
            let front = try BlkifFrontRing(initializing: shared.memory)
            ringEntries = front.size
        } catch {
            throw RingBenchmarkError(.setup, "ring geometry: \(error)")
        }
        queueDepth = configuration.queueDepth(ringEntries: ringEntries)
        try startThreads()
    }

    deinit { close() }

    /// Unbinds, unmaps and unshares. Called by `deinit` too.
    public func close() {
        if closed { return }
        closed = true
        if !ran {
            abort.store(true, ordering: .relaxed)
            start.open()
            joinThreads()
        }
        try? frontEvents.unbind(frontPort)
        try? backEvents.unbind(backPort)
        frontEvents.close()
        backEvents.close()
        try? mapper.unmap(mapping)
        try? sharer.unshare(shared)
        mapper.close()
        sharer.close()
    }

    /// Runs the exchange once: opens the start gate, waits for both threads.
    public func run() throws(RingBenchmarkError) -> RingBenchmarkResult {
        precondition(!closed && !ran, "a session runs once")
        ran = true
        start.open()
        joinThreads()
        if let e = frontError ?? backError { throw e }
        return RingBenchmarkResult(
            configuration: configuration, ringEntries: ringEntries, queueDepth: queueDepth,
            elapsedSeconds: elapsed, front: frontStats, back: backStats,
            idleBackCPUSeconds: idleBackCPU, idleSeconds: idleSeconds, checksum: checksum)
    }

    /// Starts both threads; they wait at the gate until `run` or `close`.
    private func startThreads() throws(RingBenchmarkError) {
        let gate = start
        do throws(RingBenchmarkError) {
            back = try BenchmarkThread { [self] in backendThread(gate) }
            front = try BenchmarkThread { [self] in frontendThread(gate) }
        } catch {
            abort.store(true, ordering: .relaxed)
            gate.open()
            joinThreads()
            throw error
        }
    }

    private func joinThreads() {
        front?.join()
        back?.join()
        front = nil
        back = nil
    }

    func fail(_ error: RingBenchmarkError, front isFront: Bool) {
        if isFront { frontError = error } else { backError = error }
        abort.store(true, ordering: .relaxed)
    }

    func pin(_ cpu: Int32?) -> RingBenchmarkError? {
        guard let cpu else { return nil }
        let rc = cxen_pin_to_cpu(cpu)
        return rc == 0 ? nil : RingBenchmarkError(.pinning, "pinning to CPU \(cpu): \(String(cString: strerror(rc)))")
    }
}

/// A one-shot start gate both threads sleep on (a futex word), so thread
/// creation happens in set-up and `run` measures the exchange alone.
final class StartGate: @unchecked Sendable {
    // @unchecked: the word is only touched atomically and through futex calls.
    private let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)

    init() { word.initialize(to: 0) }
    deinit { word.deallocate() }

    private var atomic: UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: UnsafeMutableRawPointer(word).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    /// Blocks until `open`.
    func wait() {
        // Acquiring: what the opener wrote before opening is visible after.
        while atomic.load(ordering: .acquiring) == 0 {
            _ = cxen_futex_wait(word, 0, 100_000_000)
        }
    }

    func open() {
        // Releasing: set-up writes happen before a thread passes the gate.
        atomic.store(1, ordering: .releasing)
        _ = cxen_futex_wake(word, Int32.max)
    }
}
