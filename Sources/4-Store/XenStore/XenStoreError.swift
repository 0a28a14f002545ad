/// Why a xenstore operation failed: a code and a message a person can read.
///
/// Wire codes are the names in `xsd_errors[]` of `io/xs_wire.h` ("EACCES",
/// "EAGAIN", …), which the daemon sends back in an `XS_ERROR` reply. A few
/// local codes describe failures of the connection itself.
public struct XenStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The error's name: one of Xen's wire names, or a local one.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The name as the wire carries it (`"EACCES"`), or a local name.
        public var rawValue: String
        /// Any name: an `XS_ERROR` reply's text is kept as sent, even one Xen does not list.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The name itself (`EACCES`).
        public var description: String { rawValue }

        /// The names `xsd_errors[]` lists, in its order.
        public static let wireNames: [String] = [
            "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
            "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
        ]
        /// True for a name Xen's daemon may send on the wire.
        public var isWireCode: Bool { Self.wireNames.contains(rawValue) }

        /// `EINVAL`: a malformed request (bad path, wrong argument count, unknown type).
        public static let invalid = Code(rawValue: "EINVAL")
        /// `EACCES`: the node's permissions deny the caller, or the request needs dom0.
        public static let accessDenied = Code(rawValue: "EACCES")
        /// `EEXIST`: the thing to create is there already (for example the same watch twice).
        public static let exists = Code(rawValue: "EEXIST")
        /// `EISDIR` (is a directory): in `xsd_errors[]`; `XenStoreServer` never sends it.
        public static let isDirectory = Code(rawValue: "EISDIR")
        /// `ENOENT`: no such node, watch or transaction.
        public static let noEntry = Code(rawValue: "ENOENT")
        /// `ENOMEM`: the daemon could not allocate; `XenStoreServer` never sends it.
        public static let noMemory = Code(rawValue: "ENOMEM")
        /// `ENOSPC`: a quota is reached (nodes, value size, permissions, transactions).
        public static let noSpace = Code(rawValue: "ENOSPC")
        /// `EIO`: the daemon failed internally; `XenStoreServer` never sends it.
        public static let io = Code(rawValue: "EIO")
        /// `ENOTEMPTY` (node has children): in `xsd_errors[]`; `XenStoreServer` never sends it.
        public static let notEmpty = Code(rawValue: "ENOTEMPTY")
        /// `ENOSYS`: the operation is not implemented.
        public static let notImplemented = Code(rawValue: "ENOSYS")
        /// `EROFS`: the connection is read-only (C xenstored's read-only socket); `XenStoreServer`
        /// has none, so never sends it.
        public static let readOnly = Code(rawValue: "EROFS")
        /// `EBUSY`: the request cannot be done now (for example, a transaction started inside one).
        public static let busy = Code(rawValue: "EBUSY")
        /// `EAGAIN`: a transaction conflicted with a committed change; run it again.
        public static let again = Code(rawValue: "EAGAIN")
        /// `EISCONN` (already connected): in `xsd_errors[]`; `XenStoreServer` never sends it.
        public static let isConnected = Code(rawValue: "EISCONN")
        /// `E2BIG`: too large for one message (a listing: use `XS_DIRECTORY_PART`), or the
        /// watch quota is reached.
        public static let tooBig = Code(rawValue: "E2BIG")
        /// `EPERM`: the operation is not allowed at all (for example, a guest giving a node away).
        public static let notPermitted = Code(rawValue: "EPERM")

        /// Local: the peer broke the wire protocol (bad length, type, framing).
        public static let protocolViolation = Code(rawValue: "EPROTO")
        /// Local: the connection is closed.
        public static let closed = Code(rawValue: "ECONNRESET")
        /// Local: a system call failed; the message names it.
        public static let system = Code(rawValue: "ESYSTEM")
        /// Local: a bounded wait ran out.
        public static let timedOut = Code(rawValue: "ETIMEDOUT")
    }

    /// What failed, as a wire or local name; compare against the static codes.
    public var code: Code
    /// Detail for a person (never sent on the wire); do not match on it.
    public var message: String

    /// An error with `code` and a readable `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `CODE: message`, for logs.
    public var description: String { "\(code): \(message)" }
}
