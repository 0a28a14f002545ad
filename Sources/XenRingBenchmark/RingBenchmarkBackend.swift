import CXen
import Glibc
import XenABI
import XenRing

extension RingBenchmarkSession {
    /// The backend thread: ringbench.c's `back_fn`.
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
            try serve(&ring, &stats)
        } catch {
            if error.code != .aborted { fail(error, front: false) }
        }
        stats.cpuSeconds = seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0
        backStats = stats
    }

    private func serve(_ ring: inout BlkifBackRing, _ stats: inout RingSideStatistics) throws(RingBenchmarkError) {
        let n = configuration.requests
        let mode = configuration.mode
        var done: UInt64 = 0
        var sum: UInt64 = 0
        defer { checksum = sum }
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
                    if mode != .busy { try notify(backEvents, backPort) }
                }
                continue
            }

            switch mode {
            case .busy:
                while try !ring.requestsWaiting() {
                    if abort.load(ordering: .relaxed) { throw Self.aborted }
                    cxen_cpu_relax()
                }
            case .event:
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: backEvents)
                }
            case .adaptive:
                if try spin({ () throws(RingBenchmarkError) -> Bool in try ring.requestsWaiting() }) { continue }
                if try !ring.finalCheck() {
                    stats.sleeps += 1
                    try sleep(on: backEvents)
                }
            }
        }
    }
}
