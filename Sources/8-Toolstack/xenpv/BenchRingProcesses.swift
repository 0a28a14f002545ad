import ArgumentParser
import CXen
import Foundation
import Glibc
import XenABI
import XenHypervisor
import XenLocks
import XenRing
import XenRingBenchmark
import XenSimulator
import XenSimulatorClient
import XenSimulatorDaemon

/// `xenpv bench ring-processes`: the blkif ring between a frontend and a
/// backend in one process (the embedded simulator) and across two processes
/// joined to a hypervisor daemon, in one run, with the same loops.
struct BenchRingProcesses: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring-processes",
        abstract: "Ring throughput in one process and across two processes (through the hypervisor daemon), in one run.",
        discussion: """
            Across processes the daemon only sets the ring up; requests, responses and notifications go
            through the shared page and the channel's wake pipes. Rounds alternate the two worlds; the
            medians are reported.
              swift run -c release xenpv bench ring-processes --mode adaptive --requests 2000000
            """)

    @Option(help: "How an idle side waits: busy, event or adaptive.")
    var mode: RingBenchmarkConfiguration.Mode = .adaptive

    @Option(help: "Most requests outstanding at once (0: the ring size).")
    var queueDepth: UInt32 = 32

    @Option(help: "Requests per round.")
    var requests: UInt64 = 1_000_000

    @Option(help: "Rounds of each world.")
    var rounds = 3

    @Option(help: "Adaptive mode: microseconds to poll before sleeping.")
    var spinMicroseconds: Double = 5

    @OptionGroup var cpus: CPUPinningOptions

    @Flag(help: "Print one JSON object.")
    var json = false

    @Flag(help: "Print each round with the frontend's sleeps and notifies.")
    var verbose = false

    @Flag(help: .hidden)
    var remoteThreads = false

    func validate() throws {
        guard requests > 0 else { throw ValidationError("--requests must be positive") }
        guard rounds > 0, rounds <= 20 else { throw ValidationError("--rounds must be 1 to 20") }
    }

    var spinNanoseconds: UInt64 { UInt64(spinMicroseconds * 1000) }

    /// XenRingBenchmark's loops with these knobs (each process pins itself).
    var sides: SplitRingSides {
        SplitRingSides(RingBenchmarkConfiguration(mode: mode, requests: requests, queueDepth: queueDepth,
                                                  spinNanoseconds: spinNanoseconds, frontCPU: nil, backCPU: nil))
    }

    func run() throws {
        let dir = "/tmp/xenpv-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var quiet = ProcessSupport.bootstrapLogging(verbose: false)
        quiet.logLevel = .critical
        let daemon = HypervisorDaemon(socketPath: dir + "/hv.sock", logger: quiet)
        try daemon.start()
        defer { daemon.stop() }
        let guest = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64))
        defer { guest.close() }

        var inside: [Double] = []
        var across: [Double] = []
        for _ in 0..<rounds {
            inside.append(try inProcess())
            across.append(try acrossProcesses(guest: guest, socket: dir + "/hv.sock"))
        }
        let a = median(inside)
        let b = median(across)
        if json {
            say("{\"mode\": \"\(mode.rawValue)\", \"queue_depth\": \(queueDepth), \"requests\": \(requests), \"rounds\": \(rounds), "
                + "\"in_process_requests_per_second\": \(Int(a)), \"across_processes_requests_per_second\": \(Int(b)), "
                + "\"ratio\": \(String(format: "%.3f", b / a))}")
        } else {
            say("in one process:     \(Int(a)) requests/s (rounds: \(inside.map { Int($0) }))")
            say("across processes:   \(Int(b)) requests/s (rounds: \(across.map { Int($0) }))")
            say("ratio across/in:    \(String(format: "%.3f", b / a))")
        }
    }

    private func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

    /// Runs the backend and the frontend on threads of this process, pinned as asked;
    /// what the frontend saw.
    private func bothSides(back: (MappedPages, any EventChannels, EventPort),
                           front: (MappedPages, any EventChannels, EventPort)) throws -> SplitRingSides.Front {
        let sides = self.sides
        let backThread = SideThread(cpu: cpus.backCPU) { try sides.back(pages: back.0, events: back.1, port: back.2) }
        let frontThread = SideThread(cpu: cpus.frontCPU) { try sides.front(pages: front.0, events: front.1, port: front.2) }
        let stats = try frontThread.value()
        _ = try? backThread.value(waitingAtMost: 1)
        return stats
    }

    /// Requests per second in `stats`, said with `label` when verbose.
    private func report(_ label: String, _ stats: SplitRingSides.Front) -> Double {
        if verbose { say("  \(label): \(Int(Double(requests) / stats.seconds)) req/s, front sleeps \(stats.sleeps), notifies \(stats.notifies)") }
        return Double(requests) / stats.seconds
    }

    /// Both loops in this process on the embedded simulator.
    private func inProcess() throws -> Double {
        let label = "in one process"
        let host = SimulatedHypervisor()
        let guest = try host.createDomain(frames: 64)
        let sharer = try guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 1, with: .dom0, writable: true)
        _ = try BlkifFrontRing(initializing: shared.memory)
        let mapper = try host.dom0.openGrantMapper()
        let mapping = try mapper.map(shared.refs[0], from: guest.domainID, writable: true)
        let fe = try guest.openEventChannels()
        let be = try host.dom0.openEventChannels()
        let fp = try fe.bindUnbound(remote: .dom0)
        let bp = try be.bindInterdomain(remote: guest.domainID, remotePort: fp)
        let stats = try bothSides(back: (mapping.memory, be, bp), front: (shared.memory, fe, fp))
        try? fe.unbind(fp)
        try? be.unbind(bp)
        try mapper.unmap(mapping)
        try sharer.unshare(shared)
        _ = host.shutdown()
        return report(label, stats)
    }

    /// The frontend here (a guest joined to the daemon), the backend in a child `xenpv` (dom0).
    private func acrossProcesses(guest: RemoteHypervisor, socket: String) throws -> Double {
        let label = "across processes"
        let sharer = try guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 1, with: .dom0, writable: true)
        _ = try BlkifFrontRing(initializing: shared.memory)
        let fe = try guest.openEventChannels()
        let fp = try fe.bindUnbound(remote: .dom0)
        if remoteThreads {
            // Diagnostic: the backend on a thread of this process, joined as dom0 over the socket.
            let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0)
            let mapper = try dom0.openGrantMapper()
            let mapping = try mapper.map(shared.refs[0], from: guest.domainID, writable: true)
            let be = try dom0.openEventChannels()
            let bp = try be.bindInterdomain(remote: guest.domainID, remotePort: fp)
            let stats = try bothSides(back: (mapping.memory, be, bp), front: (shared.memory, fe, fp))
            let rate = report("remote clients, one process", stats)
            try? be.unbind(bp)
            try? fe.unbind(fp)
            try mapper.unmap(mapping)
            try sharer.unshare(shared)
            dom0.close()
            return rate
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/\(getpid())/exe").resolvingSymlinksInPath()
        child.arguments = ["bench", "ring-peer", "--connect", socket, "--guest", "\(guest.domainID.rawValue)",
                           "--ref", "\(shared.refs[0].rawValue)", "--port", "\(fp.rawValue)", "--requests", "\(requests)",
                           "--mode", mode.rawValue, "--spin-microseconds", "\(spinMicroseconds)", "--back-cpu=\(cpus.backCPU)"]
        let pipe = Pipe()
        child.standardOutput = pipe
        try child.run()
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) }; child.waitUntilExit() }
        // The child says "ready" once it mapped the ring and bound the port.
        var seen = Data()
        let deadline = Date().addingTimeInterval(20)
        while !String(decoding: seen, as: UTF8.self).contains("ready") {
            guard Date() < deadline, child.isRunning || !seen.isEmpty else { throw ValidationError("the backend process did not start") }
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { throw ValidationError("the backend process exited before it was ready") }
            seen.append(chunk)
        }
        let sides = self.sides
        let stats = try SideThread(cpu: cpus.frontCPU) { try sides.front(pages: shared.memory, events: fe, port: fp) }.value()
        child.waitUntilExit()
        guard child.terminationStatus == 0 else { throw ValidationError("the backend process failed (\(child.terminationStatus))") }
        try? fe.unbind(fp)
        fe.close()
        try sharer.unshare(shared)
        return report(label, stats)
    }
}

/// The backend half of `ring-processes`, run as its own process (not for people).
struct BenchRingPeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ring-peer", shouldDisplay: false)

    @Option var connect: String
    @Option var guest: UInt16
    @Option var ref: UInt32
    @Option var port: UInt32
    @Option var requests: UInt64
    @Option var mode: RingBenchmarkConfiguration.Mode
    @Option var spinMicroseconds: Double
    @Option var backCPU: Int32

    func run() throws {
        if backCPU >= 0 { _ = cxen_pin_to_cpu(backCPU) }
        let hv = try ProcessSupport.join(connect, as: .dom0)
        defer { hv.close() }
        let mapper = try hv.openGrantMapper()
        let mapping = try mapper.map(GrantRef(ref), from: DomainID(guest), writable: true)
        let events = try hv.openEventChannels()
        let p = try events.bindInterdomain(remote: DomainID(guest), remotePort: EventPort(port))
        say("ready")
        let configuration = RingBenchmarkConfiguration(mode: mode, requests: requests,
                                                       spinNanoseconds: UInt64(spinMicroseconds * 1000), frontCPU: nil, backCPU: nil)
        _ = try SplitRingSides(configuration).back(pages: mapping.memory, events: events, port: p)
        try events.unbind(p)
        try mapper.unmap(mapping)
    }
}

/// One side of the ring on its own thread, pinned to `cpu` unless it is negative.
final class SideThread<T: Sendable>: Sendable {
    private let result = ResultBox<T>()
    private let done = DispatchSemaphore(value: 0)

    init(cpu: Int32, _ body: @escaping @Sendable () throws -> T) {
        let (result, done) = (result, done)
        startDetachedThread(named: "bench-ring-side") {
            if cpu >= 0 { _ = cxen_pin_to_cpu(cpu) }
            do { result.set(.success(try body())) } catch { result.set(.failure(error)) }
            done.signal()
        }
    }

    /// What the side returned, once it has (its loop gives up on a silent peer by itself).
    func value(waitingAtMost seconds: Double = .infinity) throws -> T {
        let deadline: DispatchTime = seconds.isFinite ? .now() + seconds : .distantFuture
        guard done.wait(timeout: deadline) == .success else {
            throw ValidationError("a ring side did not finish within \(seconds) s")
        }
        done.signal()  // a second value() returns at once
        return try result.get()
    }
}

/// XenRingBenchmark's frontend and backend loops as `ring-processes` runs
/// them: each side attaches its own view of the ring, and a side gives up on
/// a peer silent for 10 s, since a peer in another process can die without a word.
struct SplitRingSides: Sendable {
    /// What the frontend saw: its counts and its seconds from first request to last response.
    struct Front: Sendable {
        var notifies: UInt64
        var sleeps: UInt64
        var seconds: Double
    }

    let configuration: RingBenchmarkConfiguration
    static let watch = RingBenchmarkLoop.PeerWatch.silence(seconds: 10)

    init(_ configuration: RingBenchmarkConfiguration) { self.configuration = configuration }

    /// Runs the frontend on this thread, over the ring initialised on `pages`.
    func front(pages: MappedPages, events: any EventChannels, port: EventPort) throws -> Front {
        var ring = try BlkifFrontRing(attachingTo: pages, at: RingIndex(0))
        var stats = RingSideStatistics()
        let t0 = cxen_monotonic_ns()
        try RingBenchmarkLoop.frontend(&ring, configuration, events: events, port: port, watch: Self.watch, statistics: &stats)
        let ns = cxen_monotonic_ns() &- t0
        return Front(notifies: stats.notifies, sleeps: stats.sleeps, seconds: Double(ns) * 1e-9)
    }

    /// Runs the backend on this thread, over the ring mapped at `pages`.
    func back(pages: MappedPages, events: any EventChannels, port: EventPort) throws -> RingSideStatistics {
        var ring = try BlkifBackRing(attachingTo: pages)
        var stats = RingSideStatistics()
        try RingBenchmarkLoop.backend(&ring, configuration, events: events, port: port, watch: Self.watch, statistics: &stats)
        return stats
    }
}
