import Foundation
import Glibc
import NBDProtocol
import TestSupport
import Testing
import XenSockets
@testable import XenBlockStorage

/// A server written in the test that negotiates properly, reads the client's requests,
/// and then answers with what the test scripts: the bytes a broken or hostile server sends.
final class ScriptedServer: @unchecked Sendable {
    // @unchecked: the script is set before start and read by the server thread only.
    let directory: TemporaryDirectory
    let socket: String
    private let listener: Int32
    private let done = DispatchSemaphore(value: 0)

    /// What the server does once `requests` have arrived: (handle of each) -> bytes to send;
    /// then it keeps the connection open, reading, until the client goes.
    init(exportFlags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendTrim], requests: Int,
         reply: @escaping @Sendable ([UInt64]) -> [UInt8]) throws {
        directory = try TemporaryDirectory(prefix: "xenpv-nbd-hostile")
        socket = directory.path("s")
        listener = try LocalSocket.listen(at: socket, kind: .stream)
        let fd = listener
        let t = Thread { [done] in
            defer { done.signal() }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            defer { close(c) }
            _ = NBDConnection.write(c, NBDServerGreeting(flags: [.fixedNewstyle, .noZeroes]).encoded())
            guard NBDConnection.read(c, 4) != nil, let h = NBDConnection.read(c, 16),
                let header = try? NBDOptionHeader(decoding: h), NBDConnection.read(c, Int(header.length)) != nil
            else { return }
            let info = (try? NBDOptionReply(option: .go, type: .info,
                                           data: NBDInfo.export(size: 1 << 20, flags: exportFlags).encoded()).encoded()) ?? []
            let ack = (try? NBDOptionReply(option: .go, type: .ack).encoded()) ?? []
            _ = NBDConnection.write(c, info + ack)
            var handles: [UInt64] = []
            while handles.count < requests {
                guard let raw = NBDConnection.read(c, NBDRequest.size), let r = try? NBDRequest(decoding: raw) else { return }
                if r.command == .write { guard NBDConnection.read(c, Int(r.length)) != nil else { return } }
                handles.append(r.handle)
            }
            _ = NBDConnection.write(c, reply(handles))
            var sink = [UInt8](repeating: 0, count: 4096)
            while sink.withUnsafeMutableBytes({ Glibc.read(c, $0.baseAddress, 4096) }) > 0 {}
        }
        t.start()
    }

    var uri: NBDURI { NBDURI(endpoint: .unix(path: socket), exportName: "") }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        _ = done.wait(timeout: .now() + 30)
        directory.remove()
    }
}

@Suite(.timeLimit(.minutes(5)))
struct NBDHostileServerTests {
    static func simple(_ handle: UInt64, error: NBDErrno = .ok) -> [UInt8] {
        NBDSimpleReply(error: error, handle: handle).encoded()
    }

    /// Three reads in flight; the server's answer decides. Returns each tag's completion.
    func run(_ server: ScriptedServer, timeout: Duration = .seconds(30)) async throws -> [UInt64: StorageCompletion] {
        let uri = server.uri
        defer { server.stop() }
        return try await onThread {
            let s = try NBDStorage(uri: uri, queueDepth: 8, requestTimeout: timeout)
            defer { s.close() }
            let b = Buffers(byteCount: 3 * 4096, iovecCount: 3)
            var d = Driver(s)
            return try d.run((0..<3).map { .read(tag: UInt64($0), offset: 0, buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) },
                             deadline: .seconds(120))
        }
    }

    @Test func answersInAnyOrderAreMatchedByHandle() async throws {
        let server = try ScriptedServer(requests: 3) { h in
            Self.simple(h[2]) + [UInt8](repeating: 3, count: 4096) + Self.simple(h[0], error: .io)
                + Self.simple(h[1]) + [UInt8](repeating: 2, count: 4096)
        }
        let r = try await run(server)
        #expect(r[0]?.error?.code == .io(.ioError))
        #expect(r[1]?.succeeded == true && r[2]?.succeeded == true)
    }

    @Test(arguments: ["bad magic", "unknown handle", "structured reply", "garbage then close"])
    func aBrokenReplyFailsEveryOutstandingOperation(_ kind: String) async throws {
        let server = try ScriptedServer(requests: 3) { h in
            switch kind {
            case "bad magic":
                var bytes = Self.simple(h[0])
                bytes[0] ^= 0xff
                return bytes
            case "unknown handle":
                return Self.simple(h[0] ^ 0x7777_0000_0000)
            case "structured reply":
                // NBD_STRUCTURED_REPLY_MAGIC, flags, type, handle, length 4 GiB - 1.
                var w = NBDWireWriter()
                w.integer(NBDMagic.structuredReply)
                w.integer(UInt16(0))
                w.integer(UInt16(1))
                w.integer(h[0])
                w.integer(UInt32.max)
                return w.bytes
            default:
                return [1, 2, 3, 4, 5]
            }
        }
        let r = try await run(server)
        #expect(r.count == 3)
        #expect(r.values.allSatisfy { !$0.succeeded }, "\(r)")
    }

    /// A server that answers one read and sits on the rest: only those fail, after the timeout.
    @Test func aStallingServerFailsOnlyTheRequestsPastTheTimeout() async throws {
        let server = try ScriptedServer(requests: 3) { h in Self.simple(h[1]) + [UInt8](repeating: 9, count: 4096) }
        let r = try await run(server, timeout: .seconds(1))
        #expect(r[1]?.succeeded == true)
        #expect(r[0]?.error?.code == .io(.timedOut) && r[2]?.error?.code == .io(.timedOut))
    }
}
