import Glibc
import XenABI
import XenHypervisor
import XenLocks

/// Where a simulated domain's suspend call is: the guest's blocked call and the
/// toolstack's answer to it.
final class SimulatedSuspension: Sendable {
    struct State {
        /// A guest call is blocked, waiting for an answer.
        var pending = false
        /// The toolstack's answer, taken by the blocked call.
        var answer: Result<SuspendOutcome, HypervisorError>?
        /// Suspend calls made so far.
        var calls = 0
    }
    let state = Locked(State())
}

/// The guest's half of save and restore in one process, driven by a test playing the
/// toolstack: the guest's ``suspend(timeout:)`` blocks until the test answers with
/// ``finishSuspend(_:)`` or ``failSuspend(_:)``.
///
/// A `.resumed` answer makes the domain look as if it ran from a saved copy: its grants
/// (but the reserved ones the toolstack seeds) are ended, other domains' mappings of its
/// frames are taken away, and every event-channel port of its handles is closed (peers
/// fall back to unbound), while its memory stays where it was and its handles stay
/// open. A driver that then releases an old grant or port gets an error, or, once the
/// number is reused, releases someone else's: drivers must drop them. Stop the old
/// backends first, as a toolstack destroys the source's devices.
extension SimulatedDomain: DomainSuspending {
    /// Blocks the calling thread until the toolstack answers (see the extension's
    /// description), polling every millisecond. Throws `EBUSY` while another call of
    /// this domain waits, `ETIMEDOUT` when `timeout` passes, and what ``failSuspend(_:)``
    /// gives.
    public func suspend(timeout: Duration) throws(HypervisorError) -> SuspendOutcome {
        _ = try liveHypervisor()
        try suspension.state.withLock { (s: inout SimulatedSuspension.State) throws(HypervisorError) in
            guard !s.pending else { throw .errno(.resourceBusy, "\(domainID) is being suspended already") }
            s.pending = true
            s.answer = nil
            s.calls += 1
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            let answer = suspension.state.withLock { s -> Result<SuspendOutcome, HypervisorError>? in
                guard let a = s.answer else { return nil }
                s.pending = false
                s.answer = nil
                return a
            }
            if let answer { return try answer.get() }
            if ContinuousClock.now >= deadline {
                let late = suspension.state.withLock { s -> Result<SuspendOutcome, HypervisorError>? in
                    defer {
                        s.pending = false
                        s.answer = nil
                    }
                    return s.answer
                }
                if let late { return try late.get() }
                throw .errno(.timedOut, "\(domainID): no answer to the suspend within \(timeout)")
            }
            usleep(1000)
        }
    }

    /// True while the guest's suspend call waits for an answer.
    public var isSuspendPending: Bool { suspension.state.withLock { $0.pending } }

    /// Suspend calls the guest made so far.
    public var suspendCalls: Int { suspension.state.withLock { $0.calls } }

    /// Waits (polling, holding no thread) until the guest's suspend call waits for an
    /// answer; false if `timeout` passed first.
    public func waitForSuspend(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isSuspendPending {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return true
    }

    /// Answers the waiting suspend call. For `.resumed`, first takes away what the old
    /// copy held (see the extension's description) and returns it: grants ended, other
    /// domains' mappings of its frames, ports closed. Returns empty leftovers for
    /// `.cancelled`. Throws `.invalidArgument` when no call waits.
    @discardableResult
    public func finishSuspend(_ outcome: SuspendOutcome) throws(HypervisorError) -> Leftovers {
        guard isSuspendPending else { throw .errno(.invalidArgument, "\(domainID) has no suspend call waiting") }
        let revoked = outcome == .resumed ? try revokeForResume() : Leftovers()
        suspension.state.withLock { $0.answer = .success(outcome) }
        return revoked
    }

    /// Makes the waiting suspend call throw `error` (a toolstack that could not save).
    public func failSuspend(_ error: HypervisorError) throws(HypervisorError) {
        guard isSuspendPending else { throw .errno(.invalidArgument, "\(domainID) has no suspend call waiting") }
        suspension.state.withLock { $0.answer = .failure(error) }
    }

    /// What a restore leaves behind of the old copy: nothing the domain granted, mapped
    /// by others, or bound.
    private func revokeForResume() throws(HypervisorError) -> Leftovers {
        let hv = try liveHypervisor()
        var left = Leftovers()
        // Others' mappings of our frames first: their pins would keep the grants alive.
        for other in hv.allDomains where other !== self {
            let records = other.takeMappings(of: domainID)
            left.mappings += other.leftovers(of: records)
            for r in records {
                ForeignView.detach(r.base, pages: r.refs.count)
                grantTable.lock.withLock { for ref in r.refs { grantTable.unpin(ref, writable: r.writable) } }
            }
        }
        left.grants = grantTable.lock.withLock { grantTable.revokeUnpinned() }
        left.ports = hv.eventControl.withLock { events.openPorts() }
        for handle in openEventHandles { handle.closePortsForResume(hv) }
        left.normalise()
        return left
    }
}
