import Benchmark
import XenRingBenchmark
import XenSimulator

/// Each benchmark sets up two simulated domains and a blkif ring (threads
/// included) outside the measurement, then measures one exchange of
/// `requests` requests. Set-up allocates; the exchange must not: the malloc
/// threshold is absolute and independent of the request count, so any
/// allocation per request fails it.
let benchmarks: @Sendable () -> Void = {
    let requests: UInt64 = 200_000
    Benchmark.defaultConfiguration = .init(
        metrics: [.mallocCountTotal, .wallClock, .throughput, .cpuTotal],
        timeUnits: .milliseconds,
        warmupIterations: 1,
        maxDuration: .seconds(10),
        maxIterations: 5,
        thresholds: [.mallocCountTotal: .init(absolute: [.p100: 0])])

    for mode in RingBenchmarkConfiguration.Mode.allCases {
        for queueDepth: UInt32 in [1, 32] {
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
