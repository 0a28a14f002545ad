/// What one queue does that no other queue does: its service step. The
/// ``DriverRuntime`` owns the rest (the thread, stop, spinning, sleeping, the event
/// channel, failures) and calls these on the queue's thread only.
public protocol DriverService: AnyObject {
    /// One turn: drain, validate, act, respond, notify. It must be bounded (a batch, at
    /// most a ring's worth), because stop is looked at between turns: a peer that keeps
    /// the ring full must not keep a turn going. True if it did any work.
    func serviceTurn() throws -> Bool

    /// How the thread may poll ``workArrived()`` before sleeping (see ``SpinPolicy``);
    /// nil sleeps at once. Read once, when the thread starts.
    var spinning: SpinPolicy.Settings? { get }

    /// Answers this thread waits for now (requests on its ring, operations at its
    /// engine): what a wait's spin is weighed against. Read when it goes idle.
    var inFlight: Int { get }

    /// Whether work came, looked at without a system call while spinning.
    func workArrived() throws -> Bool

    /// Notifications this thread has sent its peer so far (any count that grows with
    /// each), or nil if it does not count them. A spin after a turn that notified a
    /// sleeping peer shares its CPU with that peer more often than not (see
    /// ``Spin/poll(nanoseconds:yieldsThatMayRunOthers:_:)``).
    var notificationsSent: UInt64? { get }

    /// The final check before sleeping: arms the peer's notification and says whether
    /// work is already waiting (true: do not sleep). Chooses the extra descriptors the
    /// sleep watches.
    func prepareToSleep(_ poll: PollSet) throws -> Bool

    /// After a sleep (the event channel is already drained and re-armed): resets the
    /// service's own descriptors that fired.
    func didWake(_ poll: PollSet)

    /// After the last turn, on the queue's thread: finish or fail what is outstanding and
    /// give back what only this thread may touch. `failure` is nil after a requested stop.
    func finish(failure: (any Error)?)
}

extension DriverService {
    /// No spinning: sleep as soon as the final check finds nothing.
    public var spinning: SpinPolicy.Settings? { nil }
    /// Nothing: a service that does not spin need not count.
    public var inFlight: Int { 0 }
    /// Never reports work (only used while spinning).
    public func workArrived() throws -> Bool { false }
    /// Not counted: every spin is as strict as after a notification.
    public var notificationsSent: UInt64? { nil }
    /// Does nothing: a service without extra descriptors has none to reset.
    public func didWake(_ poll: PollSet) {}
    /// Does nothing.
    public func finish(failure: (any Error)?) {}
}
