import XenABI

/// Why blkback refused a frontend's keys or a device: a code to act on, a message to
/// read, and the error that caused it, if another did. The handshake writes it to the
/// device's `error` key.
public struct BlockBackendError: CodedError {
    /// What was refused, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The frontend asks for what blkback does not serve (an unknown `protocol`).
        case notSupported
        /// The device's storage could not be opened (the disk provider threw).
        case noDisk
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
