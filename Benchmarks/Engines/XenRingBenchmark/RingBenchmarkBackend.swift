import CXen
import Glibc
import XenABI
import XenHypervisor
import XenRing

extension RingBenchmarkLoop {
    /// The backend: ringbench.c's `back_fn`. Answers `configuration.requests`
    /// requests on `ring`, each copied out once and checked; rings `port` when
    /// a push says so and, idle, waits as `configuration.mode` says until
    /// `watch` gives up. Returns the sum of the sector numbers and grant
    /// references it read, so the copies cannot be optimised away.
    @discardableResult
    public static func backend(
        _ ring: inout BlkifBackRing, _ configuration: RingBenchmarkConfiguration,
        events: any EventChannels, port: EventPort, watch: PeerWatch,
        statistics stats: inout RingSideStatistics
    ) throws(RingBenchmarkError) -> UInt64 {
        let n = configuration.requests
        let mode = configuration.mode
        let spinNanoseconds = configuration.spinNanoseconds
        var done: UInt64 = 0
        var sum: UInt64 = 0
        while done < n {
            // req_prod read once and validated; each request copied out once.
            do throws(RingError) { _ = try ring.checkForRequests() } catch { throw error.benchmarkError }
            var answered: UInt64 = 0
            while let req = ring.nextRequest() {
                var status = Int16(BLKIF_RSP_OKAY)
                if req.nr_segments == 0 || req.nr_segments > UInt8(BLKIF_MAX_SEGMENTS_PER_REQUEST)
                    || req.seg.0.last_sect < req.seg.0.first_sect
                    || (req.operation != UInt8(BLKIF_OP_READ) && req.operation != UInt8(BLKIF_OP_WRITE)) {
                    status = Int16(BLKIF_RSP_ERROR)
                }
                sum &+= req.sector_number &+ UInt64(req.seg.0.gref)
                // Fields written in place: no padding bytes from this stack reach the guest.
                ring.withNextResponseSlot { rsp in
                    rsp.pointee.id = req.id
                    rsp.pointee.operation = req.operation
                    rsp.pointee.status = status
                }
                answered += 1
            }
            if answered > 0 {
                let mustNotify = ring.pushResponses()
                stats.pushes += 1
                done += answered
                if mustNotify {
                    stats.notifies += 1
                    if mode != .busy { try notify(events, port) }
                }
                continue
            }

            switch mode {
            case .busy:
                try busyWait(watch, for: "request") { () throws(RingBenchmarkError) -> Bool in try ring.requestsWaiting() }
            case .event:
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: events, watch)
                }
            case .adaptive:
                if try spin(spinNanoseconds, { () throws(RingBenchmarkError) -> Bool in try ring.requestsWaiting() }) { continue }
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: events, watch)
                }
            }
        }
        return sum
    }
}

extension RingBenchmarkSession {
    /// The backend thread: pinned, its CPU clock published for the idle probe, started at the gate.
    func backendThread(_ start: StartGate) {
        if let error = pin(configuration.backCPU) { fail(error, front: false) }
        var clock = clockid_t()
        pthread_getcpuclockid(pthread_self(), &clock)
        backClock.store(Int32(clock), ordering: .releasing)
        start.wait()
        if abort.load(ordering: .relaxed) { return }
        var ring: BlkifBackRing
        do throws(RingError) {
            ring = try BlkifBackRing(attachingTo: mapping.memory)
        } catch { fail(error.benchmarkError, front: false); return }
        var stats = RingSideStatistics()
        let cpu0 = seconds(CLOCK_THREAD_CPUTIME_ID)
        do throws(RingBenchmarkError) {
            checksum = try RingBenchmarkLoop.backend(&ring, configuration, events: backEvents, port: backPort,
                                                     watch: .abortFlag(abort), statistics: &stats)
        } catch {
            if error.code != .aborted { fail(error, front: false) }
        }
        stats.cpuSeconds = seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0
        backStats = stats
    }
}
