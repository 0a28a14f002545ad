import CXen
import Glibc
import XenABI
import XenHypervisor
import XenRing
import XenRingBenchmark

/// The two halves of the ring benchmark as free-standing loops, so each can run
/// in its own process: the same request fill, notification suppression and
/// waiting as XenRingBenchmark's threads (ringbench.c's `front_fn`/`back_fn`).
/// `xenpv bench ring-processes` runs them both in one process and across two,
/// so the ratio compares like with like.
enum SplitRing {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    struct Stats: Sendable {
        var notifies: UInt64 = 0
        var sleeps: UInt64 = 0
        var seconds = 0.0
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Polls `ready` for at most `ns`; true as soon as it says so.
    @inline(__always) static func spin(_ ns: UInt64, _ ready: () throws -> Bool) rethrows -> Bool {
        let deadline = cxen_monotonic_ns() &+ ns
        var tries: UInt32 = 0
        while true {
            if try ready() { return true }
            cxen_cpu_relax()
            tries &+= 1
            if tries & 15 == 0, cxen_monotonic_ns() >= deadline { return false }
        }
    }

    /// Sleeps until a port fires (at most `limit` seconds in all), then re-arms every fired port.
    static func sleep(on events: any EventChannels, limit: Double) throws {
        let deadline = now() + limit
        while try !events.wait(timeoutMilliseconds: 100) {
            if now() > deadline { throw Failure(description: "no event for \(limit) s: the peer stopped") }
        }
        while let p = try events.pending() { try events.unmask(p) }
    }

    /// The frontend: keeps `queueDepth` blkif requests outstanding until `requests` were answered.
    static func front(pages: MappedPages, events: any EventChannels, port: EventPort, requests n: UInt64,
                      queueDepth: UInt32, mode: RingBenchmarkConfiguration.Mode, spinNanoseconds: UInt64) throws -> Stats {
        var ring = try BlkifFrontRing(attachingTo: pages, at: RingIndex(0))
        let qd = min(queueDepth == 0 ? ring.size : queueDepth, ring.size)
        var stats = Stats()
        var sent: UInt64 = 0
        var done: UInt64 = 0
        let t0 = now()
        while done < n {
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
            if produced, ring.pushRequests() {
                stats.notifies += 1
                if mode != .busy { try events.notify(port) }
            }
            _ = try ring.checkForResponses()
            var got = false
            while let rsp = ring.nextResponse() {
                guard rsp.id == done, rsp.status == Int16(BLKIF_RSP_OKAY) else {
                    throw Failure(description: "bad response id=\(rsp.id) want \(done) status=\(rsp.status)")
                }
                done += 1
                got = true
            }
            if got || done == n { continue }
            if sent < n, ring.outstandingRequests < qd { continue }
            switch mode {
            case .busy:
                let deadline = now() + 10
                while try ring.checkForResponses() == 0 {
                    cxen_cpu_relax()
                    if now() > deadline { throw Failure(description: "no response for 10 s") }
                }
            case .event, .adaptive:
                if mode == .adaptive, try spin(spinNanoseconds, { try ring.checkForResponses() > 0 }) { continue }
                if try !ring.finalCheckForResponses() {
                    stats.sleeps += 1
                    try sleep(on: events, limit: 10)
                }
            }
        }
        stats.seconds = now() - t0
        return stats
    }

    /// The backend: answers `requests` requests, each copied out once and checked.
    static func back(pages: MappedPages, events: any EventChannels, port: EventPort, requests n: UInt64,
                     mode: RingBenchmarkConfiguration.Mode, spinNanoseconds: UInt64) throws -> Stats {
        var ring = try BlkifBackRing(attachingTo: pages)
        var stats = Stats()
        var done: UInt64 = 0
        let t0 = now()
        while done < n {
            _ = try ring.checkForRequests()
            var answered: UInt64 = 0
            while let req = ring.nextRequest() {
                var status = Int16(BLKIF_RSP_OKAY)
                if req.nr_segments == 0 || req.nr_segments > UInt8(BLKIF_MAX_SEGMENTS_PER_REQUEST)
                    || req.seg.0.last_sect < req.seg.0.first_sect
                    || (req.operation != UInt8(BLKIF_OP_READ) && req.operation != UInt8(BLKIF_OP_WRITE)) {
                    status = Int16(BLKIF_RSP_ERROR)
                }
                ring.withNextResponseSlot { rsp in
                    rsp.pointee.id = req.id
                    rsp.pointee.operation = req.operation
                    rsp.pointee.status = status
                }
                answered += 1
            }
            if answered > 0 {
                done += answered
                if ring.pushResponses() {
                    stats.notifies += 1
                    if mode != .busy { try events.notify(port) }
                }
                continue
            }
            switch mode {
            case .busy:
                let deadline = now() + 10
                while try ring.checkForRequests() == 0 {
                    cxen_cpu_relax()
                    if now() > deadline { throw Failure(description: "no request for 10 s") }
                }
            case .event, .adaptive:
                if mode == .adaptive, try spin(spinNanoseconds, { try ring.checkForRequests() > 0 }) { continue }
                if try !ring.finalCheckForRequests() {
                    stats.sleeps += 1
                    try sleep(on: events, limit: 10)
                }
            }
        }
        stats.seconds = now() - t0
        return stats
    }
}
