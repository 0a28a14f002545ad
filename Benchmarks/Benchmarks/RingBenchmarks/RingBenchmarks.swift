import Benchmark
import XenRingBenchmark
import XenSimulator

/// Each benchmark sets up two simulated domains and a blkif ring (threads
/// included) outside the measurement, then measures one exchange of
/// `requests` requests. Set-up allocates; the exchange must not: the same
/// mode runs with 10 000, 200 000 and 2 000 000 requests, and the malloc count
/// must not grow with the count. The threshold is a small constant per run
/// (threads ending, the framework's own sampling), so an allocation per
/// request exceeds it at once.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.mallocCountTotal, .wallClock, .throughput, .cpuTotal],
        timeUnits: .milliseconds,
        warmupIterations: 1,
        maxDuration: .seconds(10),
        maxIterations: 5,
        thresholds: [.mallocCountTotal: .init(absolute: [.p100: 64])])

    for mode in RingBenchmarkConfiguration.Mode.allCases {
        for (queueDepth, requests): (UInt32, UInt64) in [(1, 20_000), (32, 10_000), (32, 200_000), (32, 2_000_000)] {
            Benchmark("ring \(mode.rawValue) qd\(queueDepth) x\(requests)") { benchmark in
                let host = SimulatedHypervisor()
                let guest = try host.createDomain(frames: 64)
                let configuration = RingBenchmarkConfiguration(mode: mode, requests: requests, queueDepth: queueDepth)
                let session = try RingBenchmarkSession(configuration: configuration, frontend: guest, backend: host.dom0)
                benchmark.startMeasurement()
                let result = try session.run()
                benchmark.stopMeasurement()
                session.close()
                _ = host.shutdown()
                blackHole(result.checksum)
            }
        }
    }
}
