import Glibc
import NBDProtocol
import SystemPackage

/// What the fixed-newstyle handshake with `NBD_OPT_GO` settled: the export's size, its
/// transmission flags and, when the server gave them, its block size constraints.
public struct NBDExportTerms: Hashable, Sendable {
    /// The export's size in bytes.
    public var size: UInt64
    /// The transmission flags the server sent with `NBD_INFO_EXPORT`.
    public var flags: NBDTransmissionFlags
    /// `NBD_INFO_BLOCK_SIZE`, validated; nil when the server sent none.
    public var blockSizes: NBDBlockSizeConstraints?

    /// Whether the engine can discard on this export: the server offered
    /// `NBD_CMD_WRITE_ZEROES` or `NBD_CMD_TRIM`.
    public var canDiscard: Bool { flags.contains(.sendWriteZeroes) || flags.contains(.sendTrim) }
}

/// The blocking socket calls of the NBD client: connecting to a URI's endpoint, the
/// handshake, and whole reads and writes. Only the engine's own threads call these.
enum NBDConnection {
    static func failure(_ what: String, _ e: Int32 = errno) -> StorageError {
        StorageError(.io(Errno(rawValue: e)), what)
    }

    /// Opens a stream socket to `uri`'s endpoint with `SO_RCVTIMEO`/`SO_SNDTIMEO` of
    /// `timeout`, so a server that accepts and then says nothing cannot hold the caller.
    static func connect(_ uri: NBDURI, timeout: Duration) throws(StorageError) -> Int32 {
        switch uri.endpoint {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw failure("socket(AF_UNIX)") }
            setTimeouts(fd, timeout)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let raw = Array(path.utf8)
            // NBDURI keeps socket paths under 108 bytes; checked again because this is a buffer.
            guard raw.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                throw StorageError(.outOfRange, "socket path \(path) is too long")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { dst in
                for (i, b) in raw.enumerated() { dst[i] = b }
            }
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard rc == 0 else {
                let e = errno
                close(fd)
                throw failure("connect to \(uri)", e)
            }
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &list)
            guard rc == 0, list != nil else {
                throw StorageError(.closed, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
            }
            defer { freeaddrinfo(list) }
            var lastError = ECONNREFUSED
            var entry = list
            while let a = entry {
                entry = a.pointee.ai_next
                let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else {
                    lastError = errno
                    continue
                }
                setTimeouts(fd, timeout)
                if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                    var one: Int32 = 1
                    // Requests are whole messages; Nagle would hold a lone read's header back.
                    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    return fd
                }
                lastError = errno
                close(fd)
            }
            throw failure("connect to \(uri)", lastError)
        }
    }

    static func setTimeouts(_ fd: Int32, _ timeout: Duration) {
        let ns = timeout.clampedNanoseconds
        var tv = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int(ns % 1_000_000_000 / 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Reads exactly `count` bytes; nil on end of stream, an error or the receive timeout.
    static func read(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, count - done) }
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { return nil }
        }
        return bytes
    }

    /// Writes all of `bytes`; false when the peer went away (no SIGPIPE: `MSG_NOSIGNAL`).
    static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { return false }
        }
        return true
    }

    /// The most option replies `NBD_OPT_GO` may bring before its `NBD_REP_ACK`: a server
    /// that sends information forever is refused, not followed.
    static let maximumGoReplies = 64

    /// Greeting, client flags and `NBD_OPT_GO` for `export`, asking for the block size
    /// constraints (which promises the server that we honour them).
    static func handshake(_ fd: Int32, export: String, uri: NBDURI) throws(StorageError) -> NBDExportTerms {
        func broken(_ why: String) -> StorageError { StorageError(.closed, "NBD handshake with \(uri): \(why)") }
        func receive(_ count: Int, _ what: String) throws(StorageError) -> [UInt8] {
            guard let bytes = read(fd, count) else { throw broken("the server closed the connection or went silent before \(what)") }
            return bytes
        }
        do {
            let greeting = try NBDServerGreeting(decoding: try receive(NBDServerGreeting.size, "its greeting"))
            guard greeting.flags.contains(.fixedNewstyle) else { throw broken("the server does not speak fixed newstyle") }
            let flags: NBDClientFlags = greeting.flags.contains(.noZeroes) ? [.fixedNewstyle, .noZeroes] : [.fixedNewstyle]
            let data = try NBDInfoRequest(name: export, requests: [.blockSize]).encoded()
            // NBDInfoRequest caps the name at 4096 bytes, so the length fits.
            let header = NBDOptionHeader(option: .go, length: UInt32(data.count))
            guard write(fd, NBDClientGreeting(flags: flags).encoded() + header.encoded() + data) else {
                throw broken("the server closed the connection during option haggling")
            }
            var size: UInt64? = nil
            var transmission = NBDTransmissionFlags()
            var blockSizes: NBDBlockSizeConstraints? = nil
            for _ in 0..<maximumGoReplies {
                let reply = try NBDOptionReply.decodeHeader(try receive(NBDOptionReply.headerSize, "an option reply"))
                let payload = try receive(Int(reply.length), "an option reply's data")
                guard reply.option == .go else { throw broken("a reply to \(reply.option), not to NBD_OPT_GO") }
                if reply.type.isError {
                    let text = String(decoding: payload.prefix(NBDLimits.maximumString), as: UTF8.self)
                    let what = reply.type == .errUnknown ? "no export named \(export.debugDescription)" : "NBD_OPT_GO refused"
                    throw broken("\(what) (reply 0x\(String(reply.type.rawValue, radix: 16))\(text.isEmpty ? "" : ": " + text))")
                }
                switch reply.type {
                case .info:
                    switch try NBDInfo(decoding: payload) {
                    case .export(let s, let f):
                        size = s
                        transmission = f
                    case .blockSize(let c):
                        blockSizes = c
                    default:
                        break  // names, descriptions and unknown information: proto.md says ignore
                    }
                case .ack:
                    guard let size else { throw broken("NBD_REP_ACK without NBD_INFO_EXPORT") }
                    if let blockSizes { try blockSizes.validate(exportSize: size) }
                    return NBDExportTerms(size: size, flags: transmission, blockSizes: blockSizes)
                default:
                    throw broken("reply type \(reply.type.rawValue) to NBD_OPT_GO")
                }
            }
            throw broken("more than \(maximumGoReplies) replies to NBD_OPT_GO")
        } catch let e as StorageError {
            throw e
        } catch {
            throw broken("\(error)")
        }
    }
}
