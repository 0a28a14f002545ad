import SystemPackage
import XenABI

/// Why a hypercall-level operation failed: a small value with a code the caller
/// can act on and a message a person can read.
public struct HypervisorError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, in a form the caller can switch on.
    public enum Code: Hashable, Sendable {
        /// A grant-table operation failed with Xen's status (`GNTST_*`).
        case grant(GrantStatus)
        /// A call failed as the real library would, with this errno
        /// (for example `EINVAL` for a port that is not bound, `ENOMEM`).
        case errno(Errno)
        /// The grant is still mapped by its grantee (`GTF_reading`/`GTF_writing`),
        /// so access cannot end yet; try again after the peer unmaps.
        case busy
        /// The handle, the domain or the hypervisor is gone.
        case closed
    }

    /// What went wrong.
    public var code: Code
    /// What was being done, for a person to read (for example "map: no domain dom7").
    public var message: String

    /// An error with `code`, described by `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// A grant-table failure with Xen's status (`GNTST_*`).
    public static func grant(_ status: GrantStatus, _ message: String) -> Self {
        Self(.grant(status), message)
    }

    /// A failure the real library would report with `errno`.
    public static func errno(_ errno: Errno, _ message: String) -> Self {
        Self(.errno(errno), message)
    }

    /// The message followed by the cause, for logs.
    public var description: String {
        switch code {
        case .grant(let status): "\(message): \(status) (GNTST \(status.rawValue))"
        case .errno(let errno): "\(message): \(errno)"
        case .busy: "\(message): grant still mapped by its grantee"
        case .closed: "\(message): closed"
        }
    }
}
