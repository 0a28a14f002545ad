import XenABI

/// Why a ring refused to go on: the peer broke the ring protocol, or a ring
/// was asked for with a geometry `ring.h` cannot describe.
///
/// A driver acts on the code (the usual answer to a peer error is to
/// disconnect that one device); the message is for a person.
public struct RingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong: which index check failed, or a geometry that is no ring.
    public enum Code: Hashable, Sendable {
        /// The frontend's `req_prod` runs more than a ring ahead of the
        /// responses produced (`RING_REQUEST_PROD_OVERFLOW`).
        case requestProducerOverflow
        /// The frontend's `req_prod` moved back behind requests already
        /// consumed: an honest producer index only grows.
        case requestProducerWentBack
        /// The backend's `rsp_prod` runs more than a ring ahead of the
        /// responses consumed (`RING_RESPONSE_PROD_OVERFLOW`).
        case responseProducerOverflow
        /// The backend's `rsp_prod` announces more responses than requests
        /// were produced: a response without a request.
        case responseWithoutRequest
        /// The page count or entry types give no ring `ring.h` can describe.
        case badGeometry
    }

    /// What went wrong; drivers decide on this.
    public var code: Code
    /// What went wrong with the indices involved, for a person to read.
    public var message: String
    /// The offending producer index as read (once) from shared memory, if any.
    public var producerIndex: RingIndex?

    /// An error with `code`, described by `message`, naming the bad index read from the peer if there was one.
    public init(_ code: Code, _ message: String, producerIndex: RingIndex? = nil) {
        self.code = code
        self.message = message
        self.producerIndex = producerIndex
    }

    /// The message, followed by the offending producer index if there is one.
    public var description: String {
        if let producerIndex { return "\(message) (producer index \(producerIndex))" }
        return message
    }
}
