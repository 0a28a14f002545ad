import Testing
import XenABI
import XenRingBenchmark
import XenSimulator

/// The benchmark engine runs the ringbench.c protocol correctly on the
/// simulator in every mode. No figure here is timed; only counts and CPU
/// time while idle are checked.
@Suite(.timeLimit(.minutes(5)))
struct RingBenchmarkSessionTests {
    static func expectedChecksum(_ n: UInt64) -> UInt64 {
        var sum: UInt64 = 0
        for i in 0 ..< n { sum &+= i &* 8 &+ (i & 1023) }
        return sum
    }

    @Test(arguments: RingBenchmarkConfiguration.Mode.allCases, [UInt32(1), 32])
    func everyRequestIsAnsweredInOrder(mode: RingBenchmarkConfiguration.Mode, queueDepth: UInt32) throws {
        let host = SimulatedHypervisor()
        let guest = try host.createDomain(frames: 16)
        let n: UInt64 = mode == .busy ? 2_000 : 5_000
        // Unpinned: tests share two cores with everything else.
        let configuration = RingBenchmarkConfiguration(
            mode: mode, requests: n, queueDepth: queueDepth, frontCPU: nil, backCPU: nil)
        let session = try RingBenchmarkSession(configuration: configuration, frontend: guest, backend: host.dom0)
        let result = try session.run()
        session.close()
        #expect(host.shutdown().isEmpty, "the session released every grant, mapping and port")
        #expect(result.checksum == Self.expectedChecksum(n))
        #expect(result.queueDepth == queueDepth && result.ringEntries == 32)
        #expect(result.front.pushes > 0 && result.back.pushes > 0)
        // At queue depth 1 each push carries one request.
        if queueDepth == 1 { #expect(result.front.pushes == n && result.back.pushes == n) }
        if mode == .busy { #expect(result.front.sleeps == 0 && result.back.sleeps == 0) }
        // A side sleeps only after a final check that re-armed its event, so
        // every sleep but the last is answered by a notify. How many sleeps there
        // are is timing: at queue depth 32 the frontend may find every answer
        // before its final check and never sleep (seen once in CI).
        if mode == .event {
            #expect(result.back.notifies + 1 >= result.front.sleeps)
            #expect(result.front.notifies + 1 >= result.back.sleeps)
        }
        #expect(result.json.hasPrefix("{") && result.json.contains("\"requests_per_second\""))
        for key in ["ns_per_request", "notifies_per_request", "sleeps_per_request", "front_cpu_s", "back_cpu_s"] {
            #expect(result.json.contains("\"\(key)\": "))
        }
    }

    @Test(arguments: [RingBenchmarkConfiguration.Mode.event, .adaptive])
    func anIdleRingCostsNoCPU(mode: RingBenchmarkConfiguration.Mode) throws {
        let host = SimulatedHypervisor()
        let guest = try host.createDomain(frames: 16)
        let configuration = RingBenchmarkConfiguration(
            mode: mode, requests: 2_000, queueDepth: 32, frontCPU: nil, backCPU: nil, idleProbeMilliseconds: 100)
        let session = try RingBenchmarkSession(configuration: configuration, frontend: guest, backend: host.dom0)
        let result = try session.run()
        session.close()
        _ = host.shutdown()
        let idle = try #require(result.idleSeconds)
        let cpu = try #require(result.idleBackCPUSeconds)
        #expect(idle >= 0.1)
        // A sleeping backend uses no CPU; 10 ms of 100 leaves room for a loaded machine.
        #expect(cpu < 0.01, "backend burned \(cpu) s of CPU in \(idle) s idle")
    }

    @Test func aSessionClosedWithoutRunningReleasesItsThreadsAndGrants() throws {
        let host = SimulatedHypervisor()
        let guest = try host.createDomain(frames: 16)
        let session = try RingBenchmarkSession(
            configuration: .init(mode: .event, requests: 10, frontCPU: nil, backCPU: nil),
            frontend: guest, backend: host.dom0)
        session.close()
        #expect(host.shutdown().isEmpty)
    }
}
