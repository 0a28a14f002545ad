import SystemPackage
import XenABI

/// Why a hypercall-level operation failed: a small value with a code the caller
/// can act on and a message a person can read.
public struct HypervisorError: Error, Hashable, Sendable, CustomStringConvertible {
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

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func grant(_ status: GrantStatus, _ message: String) -> Self {
        Self(.grant(status), message)
    }

    public static func errno(_ errno: Errno, _ message: String) -> Self {
        Self(.errno(errno), message)
    }

    public var description: String {
        switch code {
        case .grant(let status): "\(message): \(status) (GNTST \(status.rawValue))"
        case .errno(let errno): "\(message): \(errno)"
        case .busy: "\(message): grant still mapped by its grantee"
        case .closed: "\(message): closed"
        }
    }
}
