import XenABI
import XenBlockProtocol

/// Why a frontend call failed: a code to act on, a message to read, and the error that
/// caused it, if another did.
public struct BlockFrontError: CodedError {
    /// What went wrong, for a caller to switch on.
    public enum Code: Hashable, Sendable {
        /// The offset or length is not a multiple of the 512-byte sector.
        case misaligned
        /// The range leaves the device.
        case outOfRange
        /// A write or discard on a device the backend serves read-only.
        case readOnly
        /// The backend answered `BLKIF_RSP_ERROR` (an I/O error, or a request it refused).
        case ioError
        /// The backend answered `BLKIF_RSP_EOPNOTSUPP`, or did not advertise the feature.
        case notSupported
        /// The backend answered with a status blkif.h does not define.
        case badStatus
        /// The frontend was shut down before the request completed.
        case closed
        /// The device is not the one the request was made for (a resume found a disk of
        /// another size).
        case changed
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a log: the operation and what refused it.
    public var message: String
    /// The error behind this one (a ring or store failure), if any.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a human-readable `message`, and the error that caused it, if any.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    /// The error for a response status other than `BLKIF_RSP_OKAY`.
    public init(status: BlkifStatus, operation: BlkifOperation) {
        switch status {
        case .error: self.init(.ioError, "backend answered BLKIF_RSP_ERROR to \(operation)")
        case .notSupported: self.init(.notSupported, "backend answered BLKIF_RSP_EOPNOTSUPP to \(operation)")
        default: self.init(.badStatus, "backend answered status \(status.rawValue) to \(operation)")
        }
    }
}
