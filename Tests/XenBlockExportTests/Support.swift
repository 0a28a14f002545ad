import Foundation
import Glibc
import NBDProtocol
import SystemPackage
import Testing

/// Whether the NBD tools are installed (`.ci/run` installs them).
let nbdToolsInstalled = ["nbdinfo", "nbdcopy", "qemu-io", "qemu-img"].allSatisfy {
    FileManager.default.isExecutableFile(atPath: "/usr/bin/" + $0)
}

/// A hand-driven NBD client on a Unix socket: the bytes a hostile client sends.
final class RawClient: @unchecked Sendable {
    // @unchecked: a test uses a client from one thread at a time.
    let fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw Errno(rawValue: errno) }
        // A receive timeout keeps a test that waits for bytes that never come from hanging.
        var tv = timeval(tv_sec: 120, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends `bytes` if the socket has room for all of them now; false (nothing or part sent) if not.
    func sendWithoutWaiting(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) } == bytes.count
    }

    /// Exactly `count` bytes, or nil at end of stream.
    func receive(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n <= 0 { return nil }
            done += n
        }
        return out
    }

    /// Whether the server closed the connection: end of stream on the next read, or a reset
    /// (a socket closed with bytes still unread resets), not the receive timeout.
    func closedByServer() -> Bool {
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, 0)
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    /// A client on `socket` that has gone through ``go(requests:)``, made on a thread of its
    /// own (its socket calls block).
    static func inTransmission(_ socket: String) async throws -> RawClient {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<RawClient, any Error>) in
            Thread {
                c.resume(with: Result {
                    let client = try RawClient(socket)
                    _ = try client.go()
                    return client
                })
            }.start()
        }
    }

    /// Greeting, flags, `NBD_OPT_GO` for the default export; the transmission flags and size.
    func go(requests: [NBDInfoType] = [.blockSize]) throws -> (size: UInt64, flags: NBDTransmissionFlags) {
        guard let greeting = receive(NBDServerGreeting.size) else { throw NBDProtocolError(.truncated, "no greeting") }
        _ = try NBDServerGreeting(decoding: greeting)
        send(NBDClientGreeting(flags: [.fixedNewstyle, .noZeroes]).encoded())
        let data = try NBDInfoRequest(name: "", requests: requests).encoded()
        send(NBDOptionHeader(option: .go, length: UInt32(data.count)).encoded() + data)
        var export: (UInt64, NBDTransmissionFlags)?
        while true {
            guard let h = receive(NBDOptionReply.headerSize) else { throw NBDProtocolError(.truncated, "no option reply") }
            let header = try NBDOptionReply.decodeHeader(h)
            let payload = receive(Int(header.length)) ?? []
            if header.type == .ack { break }
            guard header.type == .info else { throw NBDProtocolError(.badMagic, "option error \(header.type.rawValue)") }
            if case .export(let size, let flags) = try NBDInfo(decoding: payload) { export = (size, flags) }
        }
        guard let export else { throw NBDProtocolError(.truncated, "no NBD_INFO_EXPORT") }
        return export
    }

    /// Sends a request (and data) and reads its simple reply (and, for a good read, the data).
    func request(_ r: NBDRequest, data: [UInt8] = []) throws -> (NBDErrno, [UInt8]) {
        send(r.encoded() + data)
        guard let bytes = receive(NBDSimpleReply.size) else { throw NBDProtocolError(.truncated, "no reply") }
        let reply = try NBDSimpleReply(decoding: bytes)
        #expect(reply.handle == r.handle)
        if r.command == .read && reply.error == .ok {
            return (reply.error, receive(Int(r.length)) ?? [])
        }
        return (reply.error, [])
    }
}
