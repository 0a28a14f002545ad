import CXen
import Glibc
import XenABI
import XenHypervisor
import XenRing

extension RingBenchmarkLoop {
    /// The frontend: ringbench.c's `front_fn`. Keeps the configured queue
    /// depth of blkif requests outstanding on `ring` until
    /// `configuration.requests` were answered, each response checked; rings
    /// `port` when a push says so and, idle, waits as `configuration.mode`
    /// says until `watch` gives up. If `configuration.idleProbeMilliseconds`
    /// is nonzero, `idleProbe` runs once, halfway, with every request answered.
    public static func frontend(
        _ ring: inout BlkifFrontRing, _ configuration: RingBenchmarkConfiguration,
        events: any EventChannels, port: EventPort, watch: PeerWatch,
        statistics stats: inout RingSideStatistics, idleProbe: () -> Void = {}
    ) throws(RingBenchmarkError) {
        let n = configuration.requests
        let qd = configuration.queueDepth(ringEntries: ring.size)
        let mode = configuration.mode
        let spinNanoseconds = configuration.spinNanoseconds
        var probeAt = configuration.idleProbeMilliseconds > 0 ? n / 2 : UInt64.max
        var sent: UInt64 = 0
        var done: UInt64 = 0
        while done < n {
            if done >= probeAt, done == sent {
                probeAt = UInt64.max
                idleProbe()
            }
            // Produce up to qd outstanding requests, filled as ringbench.c does.
            var produced = false
            while sent < n, ring.outstandingRequests < qd {
                let id = sent
                ring.withNextRequestSlot { req in
                    req.pointee.operation = UInt8(id & 1 == 1 ? BLKIF_OP_WRITE : BLKIF_OP_READ)
                    req.pointee.nr_segments = 1
                    req.pointee.handle = 0
                    req.pointee.id = id
                    req.pointee.sector_number = id &* 8
                    req.pointee.seg.0.gref = grant_ref_t(truncatingIfNeeded: id & 1023)
                    req.pointee.seg.0.first_sect = 0
                    req.pointee.seg.0.last_sect = 7
                }
                sent += 1
                produced = true
            }
            if produced {
                let mustNotify = ring.pushRequests()
                stats.pushes += 1
                if mustNotify {
                    stats.notifies += 1
                    if mode != .busy { try notify(events, port) }
                }
            }

            // Consume responses: rsp_prod read once, each response checked.
            do throws(RingError) { _ = try ring.checkForResponses() } catch { throw error.benchmarkError }
            var got = false
            while let rsp = ring.nextResponse() {
                if rsp.id != done || rsp.status != Int16(BLKIF_RSP_OKAY) {
                    throw RingBenchmarkError(.badResponse, "bad response id=\(rsp.id) want \(done) status=\(rsp.status)")
                }
                done += 1
                got = true
            }
            if got || done == n { continue }
            if sent < n, ring.outstandingRequests < qd { continue }

            // Nothing to do: wait for responses.
            switch mode {
            case .busy:
                try busyWait(watch, for: "response") { () throws(RingBenchmarkError) -> Bool in try ring.responsesWaiting() }
            case .event:
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: events, watch)
                }
            case .adaptive:
                if try spin(spinNanoseconds, { () throws(RingBenchmarkError) -> Bool in try ring.responsesWaiting() }) { continue }
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: events, watch)
                }
            }
        }
    }
}

extension RingBenchmarkSession {
    /// The frontend thread: pinned, started at the gate, timed around the loop.
    func frontendThread(_ start: StartGate) {
        if let error = pin(configuration.frontCPU) { fail(error, front: true) }
        start.wait()
        if abort.load(ordering: .relaxed) { return }
        var ring: BlkifFrontRing
        do throws(RingError) {
            // The shared header was initialised in `init`; this is FRONT_RING_ATTACH(0).
            ring = try BlkifFrontRing(attachingTo: shared.memory, at: RingIndex(0))
        } catch { fail(error.benchmarkError, front: true); return }
        var stats = RingSideStatistics()
        let cpu0 = seconds(CLOCK_THREAD_CPUTIME_ID)
        let t0 = seconds(CLOCK_MONOTONIC)
        do throws(RingBenchmarkError) {
            try RingBenchmarkLoop.frontend(&ring, configuration, events: frontEvents, port: frontPort,
                                           watch: .abortFlag(abort), statistics: &stats) { idleProbe() }
        } catch {
            if error.code != .aborted { fail(error, front: true) }
        }
        // The idle probe's pause is not the ring's time.
        elapsed = seconds(CLOCK_MONOTONIC) - t0 - (idleSeconds ?? 0)
        stats.cpuSeconds = seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0
        frontStats = stats
    }

    /// Stops producing for `idleProbeMilliseconds` with the ring drained and
    /// measures the backend thread's CPU time meanwhile.
    private func idleProbe() {
        let clock = clockid_t(backClock.load(ordering: .acquiring))
        let cpu0 = seconds(clock)
        let t0 = seconds(CLOCK_MONOTONIC)
        usleep(configuration.idleProbeMilliseconds * 1000)
        idleSeconds = seconds(CLOCK_MONOTONIC) - t0
        idleBackCPU = seconds(clock) - cpu0
    }
}
