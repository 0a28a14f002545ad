#if canImport(Glibc)
import Glibc
#endif

/// The few socket calls the server and the client make, in one place.
package enum Sys {
    package static var errnoText: String { String(cString: strerror(errno)) }

    package static func fail(_ what: String) -> XenStoreError {
        XenStoreError(.system, "\(what): \(errnoText)")
    }

    /// Sets O_NONBLOCK and FD_CLOEXEC (accept4 and pipe2 are GNU-only for Swift's Glibc).
    package static func makeNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// A `sockaddr_un` for `path`, or EINVAL when the path does not fit `sun_path`.
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(XenStoreError) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { throw XenStoreError(.invalid, "socket path longer than sun_path") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A blocking connection to the Unix socket at `path`.
    package static func connect(to path: String) throws(XenStoreError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw fail("socket") }
        let rc = try withAddress(path) { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else {
            let e = XenStoreError(.closed, "connect \(path): \(errnoText)")
            close(fd)
            throw e
        }
        return fd
    }

    /// Sends all of `bytes` on a blocking socket, never raising SIGPIPE.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(XenStoreError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw XenStoreError(.closed, "send: \(errnoText)")
            }
            offset += n
        }
    }
}
