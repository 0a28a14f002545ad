/// An error of the shape every driver module uses: a code to act on, a message to read,
/// and the error that caused it, if another did.
///
/// Conforming gives the description and the equality both sides of a split driver
/// share, so they are written once: the description is the message followed by the
/// cause; two errors are equal when code, message and the cause's description are
/// (an `any Error` has no equality of its own), and hashing uses code and message.
public protocol CodedError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, in a form the caller can switch on.
    associatedtype Code: Hashable & Sendable
    /// What went wrong.
    var code: Code { get }
    /// What went wrong, for a person to read.
    var message: String { get }
    /// The error behind this one, if any.
    var underlying: (any Error)? { get }
}

extension CodedError {
    /// The message, followed by the cause if there is one.
    public var description: String { underlying.map { "\(message): \($0)" } ?? message }

    /// Equal when code, message and the cause's description are: an `any Error` has no
    /// equality of its own.
    public static func == (a: Self, b: Self) -> Bool {
        a.code == b.code && a.message == b.message
            && a.underlying.map { "\($0)" } == b.underlying.map { "\($0)" }
    }

    /// Hashes code and message (the cause has no hash of its own).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
    }
}
