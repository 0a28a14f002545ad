import CXen
import Glibc
import SystemPackage

/// The Unix sockets the daemons listen on (`xenpv hypervisor`, `xenpv xenstored`).
///
/// A daemon's socket is the door to dom0's rights, so it is made so that no
/// local user the daemon did not mean to admit can open it: the file mode is
/// fixed before the name exists (whatever the umask), names that carry no file
/// permissions at all (abstract or empty) are refused, and a path that holds
/// something other than a dead socket is never removed. The file mode is the
/// first gate only: a daemon also checks every connection's `PeerCredentials`.
public enum LocalSocket {
    /// The socket type a daemon listens with.
    public enum Kind: Sendable {
        /// `SOCK_STREAM` (the xenstore daemon's byte stream) or `SOCK_SEQPACKET` (the hypervisor daemon's messages, which carry descriptors).
        case stream, seqpacket

        var rawValue: Int32 {
            switch self {
            case .stream: Int32(SOCK_STREAM.rawValue)
            case .seqpacket: Int32(SOCK_SEQPACKET.rawValue)
            }
        }
    }

    /// Refuses what `listen(at:)` would refuse about the name alone.
    public static func validate(path: String) throws(LocalSocketError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty else {
            throw LocalSocketError(.invalidPath, "an empty socket path would bind an abstract socket, which has no file permissions")
        }
        guard !bytes.contains(0) else {
            throw LocalSocketError(.invalidPath, "socket path \(path.debugDescription) holds a NUL byte (an abstract socket has no file permissions)")
        }
        guard bytes.count < MemoryLayout<sockaddr_un>.size - MemoryLayout<sa_family_t>.size else {
            throw LocalSocketError(.invalidPath, "socket path \(path) is longer than sun_path")
        }
    }

    /// A listening socket at `path`, created with `access`'s mode and, for a
    /// group, owned by it. A stale socket (nobody listening) is replaced; a
    /// live one, or anything that is not a socket, is left alone and refused.
    public static func listen(at path: String, kind: Kind, access: SocketAccess = .ownerOnly, backlog: Int32 = 64,
                              nonBlocking: Bool = false) throws(LocalSocketError) -> Int32 {
        try validate(path: path)
        try clearStale(path, kind: kind)
        let flags = kind.rawValue | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = socket(AF_UNIX, flags, 0)
        guard fd >= 0 else { throw .system("socket", Errno(rawValue: errno)) }
        do throws(LocalSocketError) {
            // Linux gives the bound file the socket inode's mode less the umask:
            // set first, the name never exists with wider permissions than asked.
            guard fchmod(fd, access.mode) == 0 else { throw .system("fchmod of the socket", Errno(rawValue: errno)) }
            guard withAddress(path, { bind(fd, $0, $1) }) == 0 else { throw .system("bind \(path)", Errno(rawValue: errno)) }
            // The umask may have narrowed the mode; widen it to exactly what was asked.
            guard chmod(path, access.mode) == 0 else { throw .system("chmod \(path)", Errno(rawValue: errno)) }
            if let group = access.group, chown(path, uid_t.max, group) != 0 {
                throw .system("chown \(path) to group \(group)", Errno(rawValue: errno))
            }
            guard Glibc.listen(fd, backlog) == 0 else { throw .system("listen on \(path)", Errno(rawValue: errno)) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Removes `path` only if it is a socket nobody listens on.
    private static func clearStale(_ path: String, kind: Kind) throws(LocalSocketError) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw .system("lstat \(path)", Errno(rawValue: errno))
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw LocalSocketError(.notASocket, "\(path) exists and is not a socket; not removing it")
        }
        let probe = socket(AF_UNIX, kind.rawValue | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw .system("socket", Errno(rawValue: errno)) }
        let rc = withAddress(path) { connect(probe, $0, $1) }
        let e = errno
        close(probe)
        if rc == 0 { throw LocalSocketError(.inUse, "\(path) is a socket another server listens on") }
        // Only "refused" proves nobody listens; anything else (EACCES, EPROTOTYPE) is not ours to remove.
        guard e == ECONNREFUSED else {
            throw LocalSocketError(.inUse, "\(path) is a socket that could not be probed (\(Errno(rawValue: e))); not removing it")
        }
        guard unlink(path) == 0 || errno == ENOENT else { throw .system("unlink stale \(path)", Errno(rawValue: errno)) }
    }

    /// Calls `body` with a `sockaddr_un` for a path `validate(path:)` accepted.
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

/// Who besides the owner may open a daemon's socket file.
public struct SocketAccess: Sendable, Hashable {
    /// The group that may connect besides the owner (mode 0660); nil for the owner alone (0600).
    public var group: gid_t?

    /// Access for the owner alone, or for the owner and `group`.
    public init(group: gid_t? = nil) { self.group = group }

    /// Mode 0600: the daemon's user (and root) only.
    public static let ownerOnly = SocketAccess()

    var mode: mode_t { group == nil ? 0o600 : 0o660 }
}

/// What the kernel says about the process at the other end of a Unix socket
/// (`SO_PEERCRED`, taken when it connected): the one identity a client cannot claim.
public struct PeerCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The peer's process id when it connected.
    public let pid: Int32
    /// The peer's effective user id when it connected.
    public let uid: uid_t
    /// The peer's effective primary group id when it connected (supplementary groups are not included).
    public let gid: gid_t

    /// Credentials from their parts, for tests; a daemon takes them from the kernel with ``of(_:)``.
    public init(pid: Int32, uid: uid_t, gid: gid_t) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// The credentials of `fd`'s peer, or nil if the kernel gives none.
    public static func of(_ fd: Int32) -> PeerCredentials? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        guard cxen_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    /// `pid P uid U gid G`, for logs.
    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// Whose connections a daemon treats as its administrator's (dom0's): root,
/// the daemon's own user, and optionally the members of one group.
public struct TrustedPeers: Sendable, Hashable {
    /// Users trusted by id (root and the daemon's effective user by default).
    public var uids: Set<uid_t>
    /// A group whose members are trusted too, primary or supplementary; nil for none.
    public var group: gid_t?

    /// Root and this process's effective user, plus `group` if given.
    public init(group: gid_t? = nil) {
        uids = [0, geteuid()]
        self.group = group
    }

    /// True when the peer's user is trusted, or the trusted group is its primary group or, per the user database, one of its supplementary groups.
    public func trusts(_ peer: PeerCredentials) -> Bool {
        if uids.contains(peer.uid) { return true }
        guard let group else { return false }
        return peer.gid == group || Self.supplementaryGroups(of: peer.uid).contains(group)
    }

    /// The groups the user database gives `uid` (SO_PEERCRED carries the primary group only).
    private static func supplementaryGroups(of uid: uid_t) -> [gid_t] {
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &pw, &buffer, buffer.count, &result) == 0, result != nil, let name = pw.pw_name else { return [] }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(name, pw.pw_gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(max(count, 0)))
            guard getgrouplist(name, pw.pw_gid, &groups, &count) >= 0 else { return [] }
        }
        return Array(groups.prefix(Int(max(count, 0))))
    }
}

/// Why a socket could not be made or used.
public struct LocalSocketError: Error, Sendable, CustomStringConvertible {
    /// Why: `invalidPath` (empty, NUL byte, longer than `sun_path`), `notASocket` (the path holds something else, left alone), `inUse` (a live or unprobeable socket, left alone), `system` (a system call failed; see ``errno``).
    public enum Code: Sendable { case invalidPath, notASocket, inUse, system }
    /// Why the socket could not be made or used.
    public let code: Code
    /// What happened, naming the path, for a person.
    public let message: String
    /// The system call's error, where one failed.
    public let errno: Errno?

    /// An error with `code` and `message`, and the failing call's errno if there was one.
    public init(_ code: Code, _ message: String, errno: Errno? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    static func system(_ what: String, _ e: Errno) -> LocalSocketError {
        LocalSocketError(.system, "\(what): \(e)", errno: e)
    }

    /// The message.
    public var description: String { message }
}
