import CXen
import XenHypervisor

/// The loop every driver thread runs: turns while there is work and no stop; then a
/// bounded spin, as long as the thread's ``SpinPolicy`` finds it pays; then the service's
/// final check; then a sleep. Each wait, from the idle turn until work came, is measured
/// and fed back to the policy.
struct DriverLoop<Service: DriverService> {
    let runtime: DriverRuntime
    let service: Service
    let events: any EventChannels
    let poll: PollSet

    /// Runs until stop or a failure; finishes the service; returns the failure.
    func run() -> (any Error)? {
        var failure: (any Error)?
        var policy = service.spinning.map(SpinPolicy.init)
        var notifiedBefore = service.notificationsSent
        do {
            while !runtime.isStopRequested {
                if try service.serviceTurn() { continue }
                // A wait begins: measured only for a thread that spins.
                let inFlight = policy == nil ? 0 : service.inFlight
                let began = policy == nil ? 0 : cxen_monotonic_ns()
                defer { policy?.record(wait: cxen_monotonic_ns() &- began, inFlight: inFlight) }
                // Whether it notified its peer since the last wait decides how many yields
                // that run another thread the spin allows (Spin.yieldsThatMayRunOthers).
                let notified = service.notificationsSent
                let wokePeer = notified == nil || notified != notifiedBefore
                notifiedBefore = notified
                if let budget = policy?.budget(inFlight: inFlight), budget > 0 {
                    let runtime = self.runtime, service = self.service
                    let allowance = Spin.yieldsThatMayRunOthers(inFlight: inFlight, wokePeer: wokePeer)
                    let outcome = try Spin.poll(nanoseconds: budget, yieldsThatMayRunOthers: allowance) { () throws -> Bool in
                        if runtime.isStopRequested { return true }
                        return try service.workArrived()
                    }
                    policy?.spun(preempted: outcome == .preempted)
                    if outcome == .arrived { continue }
                }
                if try service.prepareToSleep(poll) { continue }
                runtime.sleeps.bump()
                if try !poll.sleep() { break }
                // Every port that fired is re-armed; the turns that follow look at every ring.
                while let port = try events.pending() { try events.unmask(port) }
                service.didWake(poll)
            }
        } catch {
            failure = error
        }
        service.finish(failure: failure)
        return failure
    }
}
