/// Why blkback refused a frontend's keys or a device: a code to act on, a message to
/// read, and the error that caused it, if another did. The handshake writes it to the
/// device's `error` key.
public struct BlockBackendError: Error, Hashable, Sendable, CustomStringConvertible {
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
