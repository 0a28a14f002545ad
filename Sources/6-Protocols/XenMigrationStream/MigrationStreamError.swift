import XenABI

/// Why bytes are not a valid migration stream, or a value cannot be put in one.
public struct MigrationStreamError: CodedError {
    /// What is wrong, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The stream does not start with `XENPVMIG`: not a migration stream.
        case badMagic
        /// A version this decoder does not read.
        case unsupportedVersion
        /// A record's checksum does not match its bytes (corruption on the way).
        case badChecksum
        /// A length beyond the decoder's limits (a denial-of-service guard).
        case tooLong
        /// The stream ended before its end record, or a record before its announced length.
        case truncated
        /// Lengths or counts inside a record that do not add up.
        case inconsistentLength
        /// A record type this version does not define.
        case unknownRecord
        /// A field out of its range (a page size other than 4096, a bad string, a duplicate).
        case badValue
        /// Records in an order the stream does not allow (no domain record first,
        /// bytes after the end record).
        case badOrder
    }

    /// What is wrong.
    public var code: Code
    /// The record and field that failed.
    public var message: String
    /// Never set: stream errors have no cause of their own.
    public var underlying: (any Error)? { nil }

    /// An error with `code` described by `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}
