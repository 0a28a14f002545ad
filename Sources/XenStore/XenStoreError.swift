/// Why a xenstore operation failed: a code and a message a person can read.
///
/// Wire codes are the names in `xsd_errors[]` of `io/xs_wire.h` ("EACCES",
/// "EAGAIN", …), which the daemon sends back in an `XS_ERROR` reply. A few
/// local codes describe failures of the connection itself.
public struct XenStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The error's name: one of Xen's wire names, or a local one.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The names `xsd_errors[]` lists, in its order.
        public static let wireNames: [String] = [
            "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
            "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
        ]
        /// True for a name Xen's daemon may send on the wire.
        public var isWireCode: Bool { Self.wireNames.contains(rawValue) }

        public static let invalid = Code(rawValue: "EINVAL")
        public static let accessDenied = Code(rawValue: "EACCES")
        public static let exists = Code(rawValue: "EEXIST")
        public static let isDirectory = Code(rawValue: "EISDIR")
        public static let noEntry = Code(rawValue: "ENOENT")
        public static let noMemory = Code(rawValue: "ENOMEM")
        public static let noSpace = Code(rawValue: "ENOSPC")
        public static let io = Code(rawValue: "EIO")
        public static let notEmpty = Code(rawValue: "ENOTEMPTY")
        public static let notImplemented = Code(rawValue: "ENOSYS")
        public static let readOnly = Code(rawValue: "EROFS")
        public static let busy = Code(rawValue: "EBUSY")
        public static let again = Code(rawValue: "EAGAIN")
        public static let isConnected = Code(rawValue: "EISCONN")
        public static let tooBig = Code(rawValue: "E2BIG")
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

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
