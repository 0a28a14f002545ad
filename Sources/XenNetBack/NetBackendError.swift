import XenABI

/// Why netback refused a frontend's keys: a code to act on, a message to read, and the
/// error that caused it, if another did. The handshake writes it to the device's `error` key.
public struct NetBackendError: CodedError {
    public enum Code: Hashable, Sendable {
        /// The frontend asks for what netback does not do (page flipping instead of
        /// `request-rx-copy`).
        case notSupported
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
