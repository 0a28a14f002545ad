import ArgumentParser
import XenRingBenchmark
import XenSimulator

extension RingBenchmarkConfiguration.Mode: ExpressibleByArgument {}

/// `xenpv bench ring`: the blkif ring between two simulated domains, the
/// same protocol as shared/reference/ringbench.c.
struct BenchRing: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring",
        abstract: "Ring throughput between a frontend and a backend domain on the simulator.",
        discussion: """
            Compare with the C reference in one run:
              gcc -O2 -pthread -o .build/ringbench ../shared/reference/ringbench.c
              .build/ringbench -m busy -q 32 -n 10000000 -j
              swift run -c release xenpv bench ring --mode busy --queue-depth 32 --requests 10000000 --json
            """)

    @Option(help: "How an idle side waits: busy, event or adaptive.")
    var mode: RingBenchmarkConfiguration.Mode = .busy

    @Option(help: "Most requests outstanding at once (0: the ring size).")
    var queueDepth: UInt32 = 32

    @Option(help: "Requests to exchange.")
    var requests: UInt64 = 1_000_000

    @Option(help: "Adaptive mode: microseconds to poll before sleeping.")
    var spinMicroseconds: Double = 5

    @OptionGroup var cpus: CPUPinningOptions

    @Option(help: "Pause the frontend this long halfway and report the backend's CPU time meanwhile.")
    var idleProbeMilliseconds: UInt32 = 0

    @Flag(help: "Print one JSON object (the keys of ringbench -j).")
    var json = false

    func validate() throws {
        guard requests > 0 else { throw ValidationError("--requests must be positive") }
        guard spinMicroseconds >= 0, spinMicroseconds <= 1_000_000 else { throw ValidationError("--spin-microseconds out of range") }
    }

    func run() throws {
        let configuration = RingBenchmarkConfiguration(
            mode: mode, requests: requests, queueDepth: queueDepth,
            spinNanoseconds: UInt64(spinMicroseconds * 1000),
            frontCPU: cpus.front, backCPU: cpus.back,
            idleProbeMilliseconds: idleProbeMilliseconds)
        let host = SimulatedHypervisor()
        let guest = try host.createDomain(frames: 64)
        let session = try RingBenchmarkSession(configuration: configuration, frontend: guest, backend: host.dom0)
        defer { session.close() }
        let result = try session.run()
        print(json ? result.json : result.summary)
    }
}
