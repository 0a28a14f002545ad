import XenABI

/// How a suspended domain came back: `SCHEDOP_shutdown(SHUTDOWN_suspend)`'s
/// return value as a guest kernel reads it.
public enum SuspendOutcome: Sendable, Hashable {
    /// The toolstack saved the domain and it now runs from that copy (a restore
    /// or the destination of a migration). Its memory is the same, at the same
    /// addresses, but every event-channel port, grant mapping and grant
    /// reference it held is gone with the old copy: drivers drop them without
    /// releasing them and set their devices up again. Handles opened before
    /// (an ``EventChannels``, ``GrantMapper``, ``GrantSharer``) stay usable
    /// for new work.
    case resumed
    /// The save did not happen or failed (a migration whose destination went
    /// away): the domain goes on where it was, every port, grant and mapping
    /// as it was.
    case cancelled
}

/// The guest half of save, restore and migration, as Linux does it on
/// `control/shutdown = suspend`: the guest quiesces its devices, then asks to
/// be suspended, and its devices resume when the call returns.
public protocol DomainSuspending: AnyObject, Sendable {
    /// Tells the toolstack the domain is quiesced and blocks the calling thread
    /// until it is resumed or the suspend is cancelled (never from a
    /// cooperative-pool thread). Throws ``HypervisorError`` when the world
    /// cannot suspend this domain or `timeout` passes with no answer; the
    /// domain then goes on as after ``SuspendOutcome/cancelled``.
    func suspend(timeout: Duration) throws(HypervisorError) -> SuspendOutcome

    /// After a ``SuspendOutcome/resumed``, once the guest's devices are connected again:
    /// work the resume put off so as not to compete with their handshakes (letting the
    /// old host release the domain, tearing down what it left mapped) may start.
    /// `GuestSuspender` calls it; a program with no device calls it right after the
    /// resume. A world that put nothing off ignores it; one that is never told starts
    /// that work after a while (seconds) on its own.
    func resumeSettled()
}

extension DomainSuspending {
    /// Nothing put off.
    public func resumeSettled() {}
}
