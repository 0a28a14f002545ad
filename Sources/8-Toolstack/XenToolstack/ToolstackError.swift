import XenABI

/// Why the toolstack could not do what it was asked: a domain's creation, a
/// device's plug, a destroy, a shutdown.
public struct ToolstackError: CodedError {
    /// What kind of failure this is.
    public enum Code: Hashable, Sendable {
        /// The hypervisor daemon refused or could not be reached.
        case hypervisor
        /// The store refused a write or a read.
        case store
        /// No domain has that name or id.
        case noSuchDomain
        /// A domain of that name exists already.
        case nameInUse
        /// A disk's target is not usable (not absolute, missing, not a file or block device).
        case badDisk
        /// A read-write disk is attached read-write to another running domain (use `w!`).
        case diskInUse
        /// The domain has no such device (a vif's devid or MAC, a disk's vdev).
        case noSuchDevice
        /// The domain did not go away in the time given.
        case timedOut
        /// The guest program could not be started.
        case program
        /// The state directory could not be read or written.
        case state
    }
    /// What kind of failure this is.
    public var code: Code
    /// What went wrong, for a person.
    public var message: String
    /// The error behind this one, if any.
    public var underlying: (any Error)?

    /// A failure with `code`, a message and its cause.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
