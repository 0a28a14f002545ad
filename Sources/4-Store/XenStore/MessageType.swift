import CXen

/// A xenstore message type (`enum xsd_sockmsg_type` in `io/xs_wire.h`).
public struct XenStoreMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `type` word of `struct xsd_sockmsg`.
    public var rawValue: UInt32
    /// Any type word, known or not: a value read off the wire is kept as sent, and the daemon
    /// answers an unknown one with `EINVAL`.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ c: xsd_sockmsg_type) { self.rawValue = c.rawValue }

    /// `XS_CONTROL` (also `XS_DEBUG`)
    public static let control = Self(XS_CONTROL)
    /// `XS_DIRECTORY`: the names of a node's children.
    public static let directory = Self(XS_DIRECTORY)
    /// `XS_READ`: a node's value.
    public static let read = Self(XS_READ)
    /// `XS_GET_PERMS`: a node's permissions, one string each.
    public static let getPermissions = Self(XS_GET_PERMS)
    /// `XS_WATCH`: path and token.
    public static let watch = Self(XS_WATCH)
    /// `XS_UNWATCH`: path and token.
    public static let unwatch = Self(XS_UNWATCH)
    /// `XS_TRANSACTION_START`: replies with the new transaction id.
    public static let transactionStart = Self(XS_TRANSACTION_START)
    /// `XS_TRANSACTION_END`: "T" commits, "F" aborts.
    public static let transactionEnd = Self(XS_TRANSACTION_END)
    /// `XS_INTRODUCE`: domid, mfn, event channel (privileged).
    public static let introduce = Self(XS_INTRODUCE)
    /// `XS_RELEASE`: domid (privileged).
    public static let release = Self(XS_RELEASE)
    /// `XS_GET_DOMAIN_PATH`: domid → "/local/domain/<domid>".
    public static let getDomainPath = Self(XS_GET_DOMAIN_PATH)
    /// `XS_WRITE`: path then the value (not NUL-terminated).
    public static let write = Self(XS_WRITE)
    /// `XS_MKDIR`
    public static let mkdir = Self(XS_MKDIR)
    /// `XS_RM`: removes a node and its subtree.
    public static let rm = Self(XS_RM)
    /// `XS_SET_PERMS`: path then one string per permission.
    public static let setPermissions = Self(XS_SET_PERMS)
    /// `XS_WATCH_EVENT`: sent by the daemon only: path and token.
    public static let watchEvent = Self(XS_WATCH_EVENT)
    /// `XS_ERROR`: sent by the daemon only: an error name from `xsd_errors[]`.
    public static let error = Self(XS_ERROR)
    /// `XS_IS_DOMAIN_INTRODUCED`: "T" or "F".
    public static let isDomainIntroduced = Self(XS_IS_DOMAIN_INTRODUCED)
    /// `XS_RESUME`
    public static let resume = Self(XS_RESUME)
    /// `XS_SET_TARGET`: domid, target domid (privileged).
    public static let setTarget = Self(XS_SET_TARGET)
    /// `XS_RESET_WATCHES`: drop all of this connection's watches and transactions.
    public static let resetWatches = Self(XS_RESET_WATCHES)
    /// `XS_DIRECTORY_PART`: path, byte offset → generation then names from that offset.
    public static let directoryPart = Self(XS_DIRECTORY_PART)
    /// `XS_TYPE_COUNT`: types at or above this are invalid.
    public static let typeCount = Self(XS_TYPE_COUNT)
    /// `XS_INVALID`
    public static let invalid = Self(XS_INVALID)

    /// The name Xen gives the type, for logs.
    public var description: String {
        switch self {
        case .control: "CONTROL"
        case .directory: "DIRECTORY"
        case .read: "READ"
        case .getPermissions: "GET_PERMS"
        case .watch: "WATCH"
        case .unwatch: "UNWATCH"
        case .transactionStart: "TRANSACTION_START"
        case .transactionEnd: "TRANSACTION_END"
        case .introduce: "INTRODUCE"
        case .release: "RELEASE"
        case .getDomainPath: "GET_DOMAIN_PATH"
        case .write: "WRITE"
        case .mkdir: "MKDIR"
        case .rm: "RM"
        case .setPermissions: "SET_PERMS"
        case .watchEvent: "WATCH_EVENT"
        case .error: "ERROR"
        case .isDomainIntroduced: "IS_DOMAIN_INTRODUCED"
        case .resume: "RESUME"
        case .setTarget: "SET_TARGET"
        case .resetWatches: "RESET_WATCHES"
        case .directoryPart: "DIRECTORY_PART"
        default: "type \(rawValue)"
        }
    }
}
