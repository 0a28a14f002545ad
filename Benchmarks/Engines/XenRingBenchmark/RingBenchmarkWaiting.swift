import Atomics
import CXen
import XenABI
import XenHypervisor
import XenRing

extension RingBenchmarkLoop {
    /// When a side waiting for its peer gives up: how the loops learn the peer is gone.
    public struct PeerWatch: Sendable {
        enum Kind: Sendable {
            case flag(ManagedAtomic<Bool>)
            case silence(nanoseconds: UInt64, seconds: Double)
        }

        let kind: Kind

        /// Gives up when `flag` is set: the peer is a thread of this process
        /// that sets it when it fails, so waiting never times out on its own.
        static func abortFlag(_ flag: ManagedAtomic<Bool>) -> PeerWatch { PeerWatch(kind: .flag(flag)) }

        /// Gives up after `seconds` of one wait with nothing from the peer:
        /// the peer is another process, which may die without a word.
        public static func silence(seconds: Double) -> PeerWatch {
            PeerWatch(kind: .silence(nanoseconds: UInt64(seconds * 1e9), seconds: seconds))
        }
    }

    static let aborted = RingBenchmarkError(.aborted, "the other side stopped")

    /// Sleeps on `events` until a bound port fires (polling its descriptor,
    /// waking every 100 ms to ask `watch` whether to give up), then takes
    /// and re-arms every fired port.
    static func sleep(on events: any EventChannels, _ watch: PeerWatch) throws(RingBenchmarkError) {
        var silent = false
        do throws(HypervisorError) {
            switch watch.kind {
            case .flag(let abort):
                while try !events.wait(timeoutMilliseconds: 100) {
                    if abort.load(ordering: .relaxed) { break }
                }
            case .silence(let limit, _):
                let deadline = cxen_monotonic_ns() &+ limit
                while try !events.wait(timeoutMilliseconds: 100) {
                    if cxen_monotonic_ns() > deadline { silent = true; break }
                }
            }
            if !silent { while let port = try events.pending() { try events.unmask(port) } }
        } catch {
            throw RingBenchmarkError(.eventChannel, "waiting on an event channel: \(error)")
        }
        switch watch.kind {
        case .flag(let abort):
            if abort.load(ordering: .relaxed) { throw aborted }
        case .silence(_, let seconds):
            if silent { throw peerSilent("no event for \(seconds) s: the peer stopped") }
        }
    }

    /// Polls `ready` with a pause between tries until it says so (busy mode);
    /// `watch` decides when the peer is gone. `what` names the awaited thing for the error.
    @inline(__always)
    static func busyWait(_ watch: PeerWatch, for what: StaticString, _ ready: () throws(RingBenchmarkError) -> Bool) throws(RingBenchmarkError) {
        switch watch.kind {
        case .flag(let abort):
            while try !ready() {
                if abort.load(ordering: .relaxed) { throw aborted }
                cxen_cpu_relax()
            }
        case .silence(let limit, let seconds):
            let deadline = cxen_monotonic_ns() &+ limit
            while try !ready() {
                cxen_cpu_relax()
                if cxen_monotonic_ns() > deadline { throw peerSilent("no \(what) for \(seconds) s") }
            }
        }
    }

    static func peerSilent(_ message: String) -> RingBenchmarkError { RingBenchmarkError(.peerSilent, message) }

    /// Rings the peer's doorbell.
    @inline(__always)
    static func notify(_ events: any EventChannels, _ port: EventPort) throws(RingBenchmarkError) {
        do throws(HypervisorError) { try events.notify(port) } catch {
            throw RingBenchmarkError(.eventChannel, "notifying port \(port): \(error)")
        }
    }

    /// Polls `ready` with a pause between tries for at most
    /// `nanoseconds`; true as soon as it says so.
    @inline(__always)
    static func spin(_ nanoseconds: UInt64, _ ready: () throws(RingBenchmarkError) -> Bool) throws(RingBenchmarkError) -> Bool {
        let deadline = cxen_monotonic_ns() &+ nanoseconds
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
