import CXen
import XenABI
import XenHypervisor
import XenRing

extension RingBenchmarkSession {
    static let aborted = RingBenchmarkError(.aborted, "the other side stopped")

    /// Sleeps on `events` until a bound port fires (polling its descriptor,
    /// waking every 100 ms to see whether the run was aborted), then takes
    /// and re-arms every fired port.
    func sleep(on events: any EventChannels) throws(RingBenchmarkError) {
        do throws(HypervisorError) {
            while try !events.wait(timeoutMilliseconds: 100) {
                if abort.load(ordering: .relaxed) { break }
            }
            while let port = try events.pending() { try events.unmask(port) }
        } catch {
            throw RingBenchmarkError(.eventChannel, "waiting on an event channel: \(error)")
        }
        if abort.load(ordering: .relaxed) { throw Self.aborted }
    }

    /// Rings the peer's doorbell.
    @inline(__always)
    func notify(_ events: any EventChannels, _ port: EventPort) throws(RingBenchmarkError) {
        do throws(HypervisorError) { try events.notify(port) } catch {
            throw RingBenchmarkError(.eventChannel, "notifying port \(port): \(error)")
        }
    }

    /// Polls `ready` with a pause between tries for at most
    /// `spinNanoseconds`; true as soon as it says so.
    @inline(__always)
    func spin(_ ready: () throws(RingBenchmarkError) -> Bool) throws(RingBenchmarkError) -> Bool {
        let deadline = cxen_monotonic_ns() &+ configuration.spinNanoseconds
        var tries: UInt32 = 0
        while true {
            if try ready() { return true }
            cxen_cpu_relax()
            tries &+= 1
            // The clock is read every 16 tries: a vDSO call costs about as much as a few pauses.
            if tries & 15 == 0, cxen_monotonic_ns() >= deadline { return false }
        }
    }
}

extension RingError {
    var benchmarkError: RingBenchmarkError { RingBenchmarkError(.ring, "peer broke the ring: \(self)") }
}

/// The ring calls the loops make, with ring errors turned into benchmark errors.
extension FrontRing where Request == blkif_request, Response == blkif_response {
    @inline(__always)
    mutating func responsesWaiting() throws(RingBenchmarkError) -> Bool {
        do throws(RingError) { return try checkForResponses() > 0 } catch { throw error.benchmarkError }
    }

    @inline(__always)
    mutating func finalCheck() throws(RingBenchmarkError) -> Bool {
        do throws(RingError) { return try finalCheckForResponses() } catch { throw error.benchmarkError }
    }
}

extension BackRing where Request == blkif_request, Response == blkif_response {
    @inline(__always)
    mutating func requestsWaiting() throws(RingBenchmarkError) -> Bool {
        do throws(RingError) { return try checkForRequests() > 0 } catch { throw error.benchmarkError }
    }

    @inline(__always)
    mutating func finalCheck() throws(RingBenchmarkError) -> Bool {
        do throws(RingError) { return try finalCheckForRequests() } catch { throw error.benchmarkError }
    }
}
