import XenHypervisor

/// The loop every driver thread runs: turns while there is work and no stop; then a
/// bounded spin; then the service's final check; then a sleep.
struct DriverLoop<Service: DriverService> {
    let runtime: DriverRuntime
    let service: Service
    let events: any EventChannels
    let poll: PollSet

    /// Runs until stop or a failure; finishes the service; returns the failure.
    func run() -> (any Error)? {
        var failure: (any Error)?
        do {
            while !runtime.isStopRequested {
                if try service.serviceTurn() { continue }
                let budget = service.spinBudget
                if budget > .zero {
                    let runtime = self.runtime, service = self.service
                    let arrived = try Spin.poll(for: budget) { () throws -> Bool in
                        if runtime.isStopRequested { return true }
                        return try service.workArrived()
                    }
                    if arrived { continue }
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
