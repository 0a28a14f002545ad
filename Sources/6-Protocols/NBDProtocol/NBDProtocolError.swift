import XenABI

/// Why bytes from a peer are not a valid NBD message, or a value cannot be encoded.
public struct NBDProtocolError: CodedError {
    /// What is wrong, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// Fewer bytes than the message needs.
        case truncated
        /// A magic number other than the one the message starts with.
        case badMagic
        /// A length beyond what the receiver accepts (a denial of service guard).
        case tooLong
        /// Lengths inside a message that do not add up.
        case inconsistentLength
        /// Client flags proto.md does not define (the server must drop the connection).
        case unknownFlags
        /// A string that is not UTF-8, contains NUL, or exceeds 4096 bytes.
        case badString
        /// Block size constraints that break proto.md's rules.
        case badBlockSizes
    }

    /// What is wrong.
    public var code: Code
    /// The message and the field that failed.
    public var message: String
    /// Never set: protocol errors have no cause of their own.
    public var underlying: (any Error)? { nil }

    /// Creates an error with `code` and a human-readable `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
