/// Why waiting on a XenBus endpoint failed: a code to act on, a message to read.
public struct XenbusError: Error, Hashable, Sendable, CustomStringConvertible {
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

    /// The message, followed by the cause when there is one.
    public var description: String { underlying.map { "\(message): \($0)" } ?? message }

    /// Equal when code, message and the cause's description are: an `any Error` has no
    /// equality of its own.
    public static func == (a: Self, b: Self) -> Bool {
        a.code == b.code && a.message == b.message
            && a.underlying.map { "\($0)" } == b.underlying.map { "\($0)" }
    }

    /// Hashes the code and message; the cause, having no equality of its own, is left out.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
    }
}
