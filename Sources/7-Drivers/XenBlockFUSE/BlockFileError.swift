import SystemPackage
import XenABI

/// Why a device could not be mounted as a file.
public struct BlockFileError: CodedError {
    /// What went wrong.
    public enum Code: Hashable, Sendable {
        /// The device has no geometry (not connected) or one a file cannot show (sector size).
        case badDevice
        /// The name is empty, `.`, `..`, has a `/` or is longer than 255 bytes.
        case badName
        /// FUSE refused the mount (no `/dev/fuse`, not a directory, no permission).
        case mount
    }

    /// What went wrong.
    public var code: Code
    /// What was being mounted where.
    public var message: String
    /// The errno behind it.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a `message`, and its cause.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }
}
