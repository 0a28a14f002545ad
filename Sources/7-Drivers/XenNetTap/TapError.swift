import Glibc
import SystemPackage

/// Why a TAP, interface or namespace operation failed.
public struct TapError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The errno of the call that failed.
    public var errno: Errno
    /// What was being done, naming the interface, for a person.
    public var message: String

    /// An error for a call that failed with `errno` while doing `message`.
    public init(_ errno: Errno, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// The error of the C call that just failed.
    static func last(_ message: String) -> TapError { TapError(Errno(rawValue: Glibc.errno), message) }

    /// The message followed by the errno.
    public var description: String { "\(message): \(errno)" }
}
