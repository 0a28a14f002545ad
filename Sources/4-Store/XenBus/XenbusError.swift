import XenABI

/// Why waiting on a XenBus endpoint failed: a code to act on, a message to read.
public struct XenbusError: CodedError {
    /// What went wrong, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The device did not reach the wanted state in time.
        case timedOut
        /// The endpoint stopped (closed for good, or its store failed) first.
        case closed
        /// The waiting task was cancelled.
        case cancelled
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a log: the device, its role and the state it was left in.
    public var message: String
    /// What caused it, when another error did.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a human-readable `message`, and the error that caused it, if any.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
