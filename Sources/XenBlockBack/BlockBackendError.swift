import XenABI

/// Why blkback refused a frontend's keys or a device: a code to act on, a message to
/// read, and the error that caused it, if another did. The handshake writes it to the
/// device's `error` key.
public struct BlockBackendError: CodedError {
    public enum Code: Hashable, Sendable {
        /// The frontend asks for what blkback does not serve (an unknown `protocol`).
        case notSupported
        /// The device's storage could not be opened (the disk provider threw).
        case noDisk
    }

    public var code: Code
    public var message: String
    /// The error behind this one, if any.
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
