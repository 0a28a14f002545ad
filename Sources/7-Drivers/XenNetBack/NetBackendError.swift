import XenABI

/// Why netback refused a frontend's keys: a code to act on, a message to read, and the
/// error that caused it, if another did. The handshake writes it to the device's `error` key.
public struct NetBackendError: CodedError {
    /// What was refused, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The frontend asks for what netback does not do (page flipping instead of
        /// `request-rx-copy`).
        case notSupported
        /// The vif's backend directory asks for a network set-up that cannot be made: a bad
        /// `script`, `bridge`, `ip` or `vifname`, or a host tool that failed (``VifHotplug``).
        case hotplug
        /// One queue's rings or event channels could not be taken (a grant that does not
        /// map, a port that does not bind, a corrupt ring); the message names the queue.
        case queue
    }

    /// What was refused.
    public var code: Code
    /// A sentence for a log and the `error` key.
    public var message: String
    /// The error behind this one, if any.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a human-readable `message`, and the error that caused it, if any.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
