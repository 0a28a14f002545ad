import Foundation
import Glibc
import NBDProtocol
import TestSupport
import Testing
import XenSockets
@testable import XenBlockStorage

/// A server written in the test that negotiates properly, reads the client's requests,
/// and then answers with what the test scripts: the bytes a broken or hostile server sends.
/// It serves one connection after another, the same script on each (the export's size
/// from `sizes`, one per connection, the last one repeated), and records each
/// connection's requests.
final class ScriptedServer: @unchecked Sendable {
    // @unchecked: the script is set before start and read by the server thread only;
    // `received` and `serving` are behind its lock.
    let directory: TemporaryDirectory
    let socket: String
    private let listener: Int32
    private let lock = NSLock()
    private var requestsByConnection: [[NBDRequest]] = []
    /// Whether the server thread still runs.
    private var serving = true

    /// The requests each connection brought, in order of arrival.
    var received: [[NBDRequest]] { lock.withLock { requestsByConnection } }

    /// What the server does once `requests` have arrived on a connection: (handle of
    /// each, connection number) -> bytes to send, or nil to hang up at once; after
    /// sending, it reads until the client goes (`hangUp`: closes the connection instead).
    /// The bytes go in one write, or in writes of `chunk` bytes each, `pause` apart.
    init(exportFlags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendTrim], sizes: [UInt64] = [1 << 20],
         blockSizes: NBDBlockSizeConstraints? = nil, chunk: Int? = nil, pause: Duration = .zero,
         requests: Int, hangUp: Bool = false, reply: @escaping @Sendable ([UInt64], Int) -> [UInt8]?) throws {
        directory = try TemporaryDirectory(prefix: "xenpv-nbd-hostile")
        socket = directory.path("s")
        listener = try LocalSocket.listen(at: socket, kind: .stream)
        let fd = listener
        let t = Thread { [self] in
            defer { lock.withLock { serving = false } }
            var connection = 0
            while true {
                let c = accept(fd, nil, nil)
                guard c >= 0 else { return }
                serve(c, connection: connection, size: sizes[min(connection, sizes.count - 1)], flags: exportFlags, blockSizes: blockSizes,
                      chunk: chunk, pause: pause, requests: requests, hangUp: hangUp, reply: reply)
                close(c)
                connection += 1
            }
        }
        t.start()
    }

    private func serve(_ c: Int32, connection: Int, size: UInt64, flags: NBDTransmissionFlags, blockSizes: NBDBlockSizeConstraints?,
                       chunk: Int?, pause: Duration, requests: Int, hangUp: Bool,
                       reply: ([UInt64], Int) -> [UInt8]?) {
        _ = NBDConnection.write(c, NBDServerGreeting(flags: [.fixedNewstyle, .noZeroes]).encoded())
        guard NBDConnection.read(c, 4) != nil, let h = NBDConnection.read(c, 16),
            let header = try? NBDOptionHeader(decoding: h), NBDConnection.read(c, Int(header.length)) != nil
        else { return }
        let info = (try? NBDOptionReply(option: .go, type: .info,
                                       data: NBDInfo.export(size: size, flags: flags).encoded()).encoded()) ?? []
        let sizes = blockSizes.flatMap { try? NBDOptionReply(option: .go, type: .info, data: NBDInfo.blockSize($0).encoded()).encoded() } ?? []
        let ack = (try? NBDOptionReply(option: .go, type: .ack).encoded()) ?? []
        _ = NBDConnection.write(c, info + sizes + ack)
        lock.withLock { requestsByConnection.append([]) }
        var handles: [UInt64] = []
        while handles.count < requests {
            guard let raw = NBDConnection.read(c, NBDRequest.size), let r = try? NBDRequest(decoding: raw) else { return }
            if r.command == .write { guard NBDConnection.read(c, Int(r.length)) != nil else { return } }
            handles.append(r.handle)
            lock.withLock { requestsByConnection[requestsByConnection.count - 1].append(r) }
        }
        guard let bytes = reply(handles, connection) else { return }
        let step = chunk ?? max(bytes.count, 1)
        for at in stride(from: 0, to: bytes.count, by: step) {
            if at > 0 && pause > .zero { sleepThread(for: pause) }
            guard NBDConnection.write(c, Array(bytes[at..<min(at + step, bytes.count)])) else { return }
        }
        if hangUp { return }
        var sink = [UInt8](repeating: 0, count: 4096)
        while sink.withUnsafeMutableBytes({ Glibc.read(c, $0.baseAddress, 4096) }) > 0 {}
    }

    var uri: NBDURI { NBDURI(endpoint: .unix(path: socket), exportName: "") }

    /// Stops accepting, awaits (bounded, never blocking a pool thread) the server
    /// thread's end, and removes the directory. A test stops it in `withCleanup`.
    func stop() async {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        _ = await eventually { self.lock.withLock { !self.serving } }
        directory.remove()
    }
}

@Suite(.timeLimit(.minutes(5)))
struct NBDHostileServerTests {
    static func simple(_ handle: UInt64, error: NBDErrno = .ok) -> [UInt8] {
        NBDSimpleReply(error: error, handle: handle).encoded()
    }

    /// Three reads in flight; the server's answer decides. Returns each tag's completion.
    /// A connection that breaks is replaced for at most `window`.
    func run(_ server: ScriptedServer, timeout: Duration = .seconds(30),
             window: Duration = .seconds(2)) async throws -> [UInt64: StorageCompletion] {
        let uri = server.uri
        return try await withCleanup {
            return try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8, requestTimeout: timeout, reconnectWindow: window)
                defer { s.close() }
                let b = Buffers(byteCount: 3 * 4096, iovecCount: 3)
                var d = Driver(s)
                return try d.run((0..<3).map { .read(tag: UInt64($0), offset: 0, buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) })
            }
        } cleanup: {
            await server.stop()
        }
    }

    @Test func answersInAnyOrderAreMatchedByHandle() async throws {
        let server = try ScriptedServer(requests: 3) { h, _ in
            Self.simple(h[2]) + [UInt8](repeating: 3, count: 4096) + Self.simple(h[0], error: .io)
                + Self.simple(h[1]) + [UInt8](repeating: 2, count: 4096)
        }
        let r = try await run(server)
        #expect(r[0]?.error?.code == .io(.ioError))
        #expect(r[1]?.succeeded == true && r[2]?.succeeded == true)
    }

    /// A reply that breaks the stream ends the connection; the engine connects again
    /// and the server breaks it the same way each time, so after the reconnect window
    /// every outstanding operation fails, with a message naming what the server did.
    @Test(arguments: ["bad magic", "unknown handle", "structured reply", "garbage then close"])
    func aBrokenReplyFailsEveryOutstandingOperation(_ kind: String) async throws {
        let server = try ScriptedServer(requests: 3, hangUp: kind == "garbage then close") { h, _ in
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
        let cause = ["bad magic": "reply magic", "unknown handle": "which no request has",
                     "structured reply": "structured reply", "garbage then close": "closed the connection"][kind] ?? "?"
        for c in r.values {
            #expect(c.error?.code == .io(.ioError))
            #expect(c.error?.message.contains("no connection within") == true && c.error?.message.contains(cause) == true,
                    "\(String(describing: c.error))")
        }
    }

    /// The server reads three reads and hangs up without answering; the engine connects
    /// again and sends the same three requests, in the same order, on the new connection,
    /// where they are answered.
    @Test func unansweredRequestsAreResentInOrderOnANewConnection() async throws {
        let server = try ScriptedServer(requests: 3) { h, connection in
            guard connection > 0 else { return nil }
            return (0..<3).flatMap { Self.simple(h[$0]) + [UInt8](repeating: UInt8(0xA1 + $0), count: 4096) }
        }
        try await withCleanup {
            let uri = server.uri
            let (completions, resent, reconnections, bytes) = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8, reconnectWindow: .seconds(60))
                defer { s.close() }
                let b = Buffers(byteCount: 3 * 4096, iovecCount: 3)
                var d = Driver(s)
                let r = try d.run((0..<3).map { .read(tag: UInt64($0), offset: UInt64($0) * 4096,
                                                      buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) })
                return (r, s.resentRequests, s.reconnections, Array(b.bytes))
            }
            #expect(completions.count == 3 && completions.values.allSatisfy(\.succeeded))
            #expect(resent == 3 && reconnections == 1)
            for i in 0..<3 { #expect(bytes[i * 4096..<(i + 1) * 4096].allSatisfy { $0 == UInt8(0xA1 + i) }) }
            let seen = server.received
            #expect(seen.count >= 2)
            if seen.count >= 2 {
                #expect(seen[0].map(\.offset) == [0, 4096, 8192])
                #expect(seen[1].map(\.handle) == seen[0].map(\.handle))
                #expect(seen[1].map(\.offset) == seen[0].map(\.offset))
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// After the connection breaks the export comes back with another size: the engine
    /// refuses it, every outstanding operation fails with EIO saying so, and so does a later one.
    @Test func anExportThatComesBackWithAnotherSizeIsRefused() async throws {
        let server = try ScriptedServer(sizes: [1 << 20, 2 << 20], requests: 3) { _, _ in nil }
        try await withCleanup {
            let uri = server.uri
            let (first, later) = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8, reconnectWindow: .seconds(60))
                defer { s.close() }
                let b = Buffers(byteCount: 3 * 4096, iovecCount: 3)
                var d = Driver(s)
                let r = try d.run((0..<3).map { .write(tag: UInt64($0), offset: UInt64($0) * 4096,
                                                       buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) })
                let l = try d.run([.read(tag: 9, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096]))])
                return (r, l)
            }
            #expect(first.count == 3)
            for c in Array(first.values) + Array(later.values) {
                #expect(c.error?.code == .io(.ioError))
                #expect(c.error?.message.contains("size is 2097152 bytes, not 1048576") == true, "\(String(describing: c.error))")
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// A discard is NBD_CMD_WRITE_ZEROES without NO_HOLE where the server offers it (the
    /// engine promises zeros; the server may still deallocate), else NBD_CMD_TRIM.
    @Test(arguments: [true, false])
    func aDiscardIsWriteZeroesWhereOfferedElseTrim(_ zeroes: Bool) async throws {
        let flags: NBDTransmissionFlags = zeroes ? [.hasFlags, .sendFlush, .sendTrim, .sendWriteZeroes] : [.hasFlags, .sendFlush, .sendTrim]
        let server = try ScriptedServer(exportFlags: flags, requests: 1) { h, _ in Self.simple(h[0]) }
        try await withCleanup {
            let uri = server.uri
            let r = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8)
                defer { s.close() }
                #expect(s.supportsDiscard && s.discardsZero == zeroes)
                var d = Driver(s)
                return try d.run([.discard(tag: 1, offset: 4096, length: 8192)])
            }
            #expect(r[1]?.succeeded == true)
            let request = server.received.first?.first
            #expect(request?.command == (zeroes ? .writeZeroes : .trim))
            #expect(request?.flags == [] && request?.offset == 4096 && request?.length == 8192)
        } cleanup: {
            await server.stop()
        }
    }

    /// With a maximum block size of 4096 each 12 KiB read goes as three requests; the
    /// parts' data lands in the right places, and one part failing fails its read.
    @Test func aRequestAboveTheMaximumBlockSizeIsSplitAndAnyFailingPartFailsIt() async throws {
        let limits = NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 4096)
        let server = try ScriptedServer(blockSizes: limits, requests: 6) { h, _ in
            var bytes: [UInt8] = []
            for (i, handle) in h.enumerated() {
                bytes += i == 4 ? Self.simple(handle, error: .io) : Self.simple(handle) + [UInt8](repeating: UInt8(0x11 + i), count: 4096)
            }
            return bytes
        }
        try await withCleanup {
            let uri = server.uri
            let (r, bytes, payload) = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8)
                defer { s.close() }
                let b = Buffers(byteCount: 2 * 12288, iovecCount: 4)
                var d = Driver(s)
                // The first read over two buffers that do not fall on the parts' boundaries.
                let r = try d.run([.read(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [6144, 6144])),
                                   .read(tag: 2, offset: 65536, buffers: b.vector(first: 2, at: 12288, pieces: [12288]))])
                return (r, Array(b.bytes), s.maximumPayload)
            }
            #expect(payload == 4096)
            #expect(r[1]?.succeeded == true)
            #expect(r[2]?.error?.code == .io(.ioError))
            for i in 0..<3 { #expect(bytes[i * 4096..<(i + 1) * 4096].allSatisfy { $0 == UInt8(0x11 + i) }) }
            let seen = server.received.first ?? []
            #expect(seen.map(\.offset) == [0, 4096, 8192, 65536, 69632, 73728])
            #expect(seen.allSatisfy { $0.length == 4096 && $0.command == .read })
        } cleanup: {
            await server.stop()
        }
    }

    /// A server that answers one read and sits on the rest: only those fail, after the timeout.
    @Test func aStallingServerFailsOnlyTheRequestsPastTheTimeout() async throws {
        let server = try ScriptedServer(requests: 3) { h, _ in Self.simple(h[1]) + [UInt8](repeating: 9, count: 4096) }
        let r = try await run(server, timeout: .seconds(1))
        #expect(r[1]?.succeeded == true)
        #expect(r[0]?.error?.code == .io(.timedOut) && r[2]?.error?.code == .io(.timedOut))
    }
}
