import Glibc
import SystemPackage

/// Why a TAP, interface or namespace operation failed.
public struct TapError: Error, Hashable, Sendable, CustomStringConvertible {
    public var errno: Errno
    public var message: String

    public init(_ errno: Errno, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// The error of the C call that just failed.
    static func last(_ message: String) -> TapError { TapError(Errno(rawValue: Glibc.errno), message) }

    public var description: String { "\(message): \(errno)" }
}
