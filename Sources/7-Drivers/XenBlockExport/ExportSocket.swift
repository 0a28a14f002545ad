import Glibc
import XenSockets

/// Blocking socket calls for the export's own threads (never a task's).
enum ExportSocket {
    /// Reads exactly `count` bytes into `buffer`; false on end of stream or an error.
    static func readFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = Glibc.read(fd, buffer + done, count - done)
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { return false }
        }
        return true
    }

    /// Waits until `fd` has bytes to read (or an end or error, which the read then sees);
    /// false if it failed or timed out. `poll` rather than a blocking `read`: a reader
    /// asleep in `read` on a Unix socket is woken each time the client takes a reply off
    /// the other direction (the kernel's write-space wake-up does not say which way), and
    /// at queue depth 1 that needless cross-CPU wake-up comes with every request.
    static func awaitInput(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = Glibc.poll(&p, 1, -1)
            if n > 0 { return true }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// Whether `fd` has bytes to read now (or an end or error), without waiting.
    static func hasInput(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&p, 1, 0) != 0
    }

    /// Bounds each blocking read and write on `fd` to `seconds` (0: no bound); a read or
    /// write that times out fails as an error does.
    static func setTimeout(_ fd: Int32, seconds: Int) {
        var limit = timeval(tv_sec: max(0, seconds), tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = setsockopt(fd, SOL_SOCKET, option, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// `count` bytes as an array, or nil.
    static func read(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let ok = bytes.withUnsafeMutableBytes { count == 0 || readFully(fd, $0.baseAddress!, count) }
        return ok ? bytes : nil
    }

    /// How a send ended.
    enum SendOutcome: Equatable {
        /// Every byte is on the socket.
        case done
        /// The socket is full (only without waiting); `sent` says how far it got.
        case wouldBlock
        /// The peer went away.
        case failed
    }

    /// Sends what `vecs` point at from byte `sent` on, advancing `sent`; without `waiting`
    /// it never blocks (`MSG_DONTWAIT`). `MSG_NOSIGNAL`: a vanished client is an error
    /// return, not a SIGPIPE. The iovecs are the caller's scratch: the one a partial send
    /// ends in is trimmed in place.
    static func send(_ fd: Int32, _ vecs: UnsafeMutableBufferPointer<iovec>, sent: inout Int, waiting: Bool) -> SendOutcome {
        let total = vecs.reduce(0) { $0 + $1.iov_len }
        let flags = Int32(MSG_NOSIGNAL) | (waiting ? 0 : Int32(MSG_DONTWAIT))
        var first = 0
        var skip = sent
        while sent < total {
            while skip > 0 && skip >= vecs[first].iov_len {
                skip -= vecs[first].iov_len
                first += 1
            }
            if skip > 0 {
                vecs[first].iov_base = vecs[first].iov_base! + skip
                vecs[first].iov_len -= skip
                skip = 0
            }
            var msg = msghdr()
            msg.msg_iov = vecs.baseAddress! + first
            msg.msg_iovlen = vecs.count - first
            let n = sendmsg(fd, &msg, flags)
            if n < 0 {
                if errno == EINTR { continue }
                if !waiting && (errno == EAGAIN || errno == EWOULDBLOCK) { return .wouldBlock }
                return .failed
            }
            sent += n
            skip = n
        }
        return .done
    }

    /// Writes every byte of `parts`, waiting for room; false if the peer went away.
    static func writeFully(_ fd: Int32, _ parts: [UnsafeRawBufferPointer]) -> Bool {
        withUnsafeTemporaryAllocation(of: iovec.self, capacity: parts.count) { vecs in
            for (i, p) in parts.enumerated() {
                vecs.initializeElement(at: i, to: iovec(iov_base: UnsafeMutableRawPointer(mutating: p.baseAddress), iov_len: p.count))
            }
            var sent = 0
            return send(fd, vecs, sent: &sent, waiting: true) == .done
        }
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { writeFully(fd, [$0]) }
    }

    /// A listening socket for `address`, and the address it is bound to (the port filled in).
    static func listen(_ address: BlockExportAddress) throws(BlockExportError) -> (Int32, BlockExportAddress) {
        switch address {
        case .unix(let path):
            do {
                return (try LocalSocket.listen(at: path, kind: .stream, backlog: 64), address)
            } catch {
                throw BlockExportError(.system, "listen on \(address)", underlying: error)
            }
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &list)
            guard rc == 0, let first = list else {
                throw BlockExportError(.badAddress, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
            }
            defer { freeaddrinfo(list) }
            let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .system("socket", errno) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
                let e = errno
                close(fd)
                throw .system("bind \(address)", e)
            }
            guard Glibc.listen(fd, 64) == 0 else {
                let e = errno
                close(fd)
                throw .system("listen on \(address)", e)
            }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let bound = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            var actual = port
            if bound == 0 {
                withUnsafeBytes(of: &storage) { raw in
                    // sin_port and sin6_port both sit at offset 2, in network order.
                    actual = UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self))
                }
            }
            return (fd, .tcp(host: host, port: actual))
        }
    }

    /// Turns off Nagle's delay on a TCP connection (replies are whole messages already).
    static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}
