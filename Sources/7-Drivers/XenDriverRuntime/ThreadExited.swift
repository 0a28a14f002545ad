/// Proof that a driver's thread has ended (joined) or never ran: what releasing the
/// resources that thread used (its mapped ring, its ports) requires. Only
/// ``DriverRuntime/stop()`` and ``DriverRuntime/stopped()`` make one, so a release
/// written to take it cannot run under a live thread.
public struct ThreadExited: ~Copyable, Sendable {
    init() {}
}
