import XenABI

/// Why netfront refused a call or a connection: a code to act on, a message to read, and
/// the error that caused it, if another did.
public struct NetFrontError: CodedError {
    /// What went wrong, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The frame is empty or larger than netif carries.
        case badFrameSize
        /// The receive buffer is smaller than the frame waiting.
        case bufferTooSmall
        /// The backend broke the ring protocol; the queue is unusable.
        case backendFailed
        /// The event channel could not notify the backend: the handle is unusable.
        case eventChannelFailed
        /// The backend lacks what netfront needs (`feature-rx-copy`).
        case notSupported
        /// `connect` came without a `prepare` of its own (the handshake's order was broken).
        case notPrepared
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a log.
    public var message: String
    /// The error behind this one (a ring or event-channel failure), if any.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a human-readable `message`, and the error that caused it, if any.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
