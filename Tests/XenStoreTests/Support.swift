import Foundation
import Logging
import TestSupport
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// A server on fresh sockets: one for dom0, one per listed guest domain.
final class TestServer: @unchecked Sendable {
    let server: XenStoreServer
    let path: String
    let guestPaths: [DomainID: String]

    init(guests: [DomainID] = [], quotas: XenStoreQuotas = XenStoreQuotas()) throws {
        let base = "/tmp/xs-\(UUID().uuidString.prefix(8))"
        path = base + ".sock"
        var guestPaths: [DomainID: String] = [:]
        for g in guests { guestPaths[g] = base + "-d\(g.rawValue).sock" }
        self.guestPaths = guestPaths
        var logger = Logger(label: "test-xenstored")
        logger.logLevel = ProcessInfo.processInfo.environment["XS_TEST_LOG"] != nil ? .debug : .critical
        server = XenStoreServer(
            socketPath: path, extraSockets: guests.map { (guestPaths[$0]!, $0) }, quotas: quotas, logger: logger)
        try server.start()
    }

    func client() throws -> XenStoreClient { try XenStoreClient(socketPath: path) }
    func client(as domain: DomainID) throws -> XenStoreClient { try XenStoreClient(socketPath: guestPaths[domain]!) }

    /// Stops the server and awaits its loop thread's end on a thread of its own, for at
    /// most `minimumDeadline`; whether it ended. Every test calls it at its end.
    @discardableResult
    func stop() async -> Bool {
        let server = server
        return await onThread { server.stop(timeout: minimumDeadline) }
    }

    /// The last resort of a test that threw before `stop()`: tells the loop to stop and
    /// waits for nothing (a deinit may run on a pool thread).
    deinit { server.stop(timeout: 0) }
}

/// Output and status of one of Xen's xenstore-* tools run against `socket`.
struct ToolResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `/usr/bin/<tool>` with `XENSTORED_PATH=socket` and awaits it (never blocking a
/// pool thread); past `timeout` seconds (see `exitStatus(of:within:)`) it is killed and
/// this throws `TimedOut`.
func runTool(_ tool: String, _ args: [String], socket: String, timeout: Double = 10) async throws -> ToolResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/" + tool)
    p.arguments = args
    p.environment = ["XENSTORED_PATH": socket, "PATH": "/usr/bin:/bin"]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // The output is small (a tool's answer): the pipes never fill before the exit.
    guard let status = await exitStatus(of: p, within: timeout) else { throw TimedOut(seconds: timeout) }
    let (o, e) = await onThread {
        (String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
         String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }
    return ToolResult(status: status, stdout: o, stderr: e)
}

/// True when Xen's tools are installed (CI installs xenstore-utils).
let xenstoreUtilsInstalled = FileManager.default.isExecutableFile(atPath: "/usr/bin/xenstore-read")

/// A raw socket to the server, for sending hostile bytes.
///
/// Its waits (a send to a server that has stopped reading, a poll for a reply or for
/// the close) run on a thread of their own (`onThread`), never on the cooperative pool
/// the async tests run on: on two cores two blocked pool threads stall every suite.
///
/// `@unchecked Sendable` only so that thread may use it: a test uses a connection from
/// one task at a time and awaits each call, so the decoder is never touched by two
/// threads at once (the continuation's resume orders one call's accesses before the next).
final class RawConnection: @unchecked Sendable {
    let fd: Int32
    /// Kept across calls: a timeout in the middle of a message must not lose the
    /// part already read (the next call would parse from the middle of a frame).
    private var decoder = XenStoreFrameDecoder()
    init(_ path: String) throws { fd = try Sys.connect(to: path) }
    deinit { close(fd) }

    /// Sends all of `bytes`, on a thread of its own: a server that stops reading this
    /// connection (back-pressure) blocks the send until it reads again.
    func send(_ bytes: [UInt8]) async throws {
        try await onThread { try Sys.sendAll(self.fd, bytes) }
    }

    /// Reads one whole message, or nil at EOF; throws after `timeout` seconds. The
    /// default, `minimumDeadline`, is for a reply an assertion waits for; a short
    /// `timeout` is for a test whose expected outcome is that nothing comes.
    func receive(timeout: Double = minimumDeadline) async throws -> XenStoreMessage? {
        try await onThread { try self.receiveBlocking(timeout: timeout) }
    }

    /// True when the server closed the connection within `timeout` seconds. An assertion
    /// takes the default, `minimumDeadline`: a correct server's close can wait its turn
    /// on two busy cores, and only a broken one makes the test wait that long.
    func isClosedByPeer(timeout: Double = minimumDeadline) async -> Bool {
        await onThread { self.isClosedByPeerBlocking(timeout: timeout) }
    }

    /// Sends `bytes` and returns the first reply that is not a watch event, each read
    /// waiting up to `timeout`; all on one thread of its own.
    func exchange(_ bytes: [UInt8], timeout: Double = minimumDeadline) async throws -> XenStoreMessage {
        try await onThread {
            try Sys.sendAll(self.fd, bytes)
            while true {
                guard let m = try self.receiveBlocking(timeout: timeout) else {
                    throw XenStoreError(.closed, "closed by the server")
                }
                if m.type != .watchEvent { return m }
            }
        }
    }

    // The blocking halves: only on a thread of their own (see `onThread`).

    private func receiveBlocking(timeout: Double) throws -> XenStoreMessage? {
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: XenStoreLimits.headerSize + XenStoreLimits.payloadMax)
        while true {
            if let m = try decoder.next() { return m }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            guard left > 0, poll(&p, 1, left) > 0 else { throw XenStoreError(.timedOut, "no reply") }
            // Only what this message still needs: never read past it.
            let n = recv(fd, &buf, decoder.bytesWanted, 0)
            if n <= 0 { return nil }
            decoder.append(buf[0..<n])
        }
    }

    private func isClosedByPeerBlocking(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 100) > 0 {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { return true }
            }
        }
        return false
    }
}

func header(type: UInt32, req: UInt32 = 7, tx: UInt32 = 0, len: UInt32) -> [UInt8] {
    var out: [UInt8] = []
    for w in [type, req, tx, len] { withUnsafeBytes(of: w) { out.append(contentsOf: $0) } }
    return out
}

extension RawConnection {
    /// Sends one request and returns its reply, skipping watch events.
    func request(_ type: XenStoreMessageType, tx: UInt32 = 0, _ strings: [String], req: UInt32 = 1) async throws -> XenStoreMessage {
        try await exchange(XenStoreMessage(type: type, requestID: req, transactionID: tx, strings: strings).encoded())
    }

    /// WRITE with a value (the payload is path NUL value).
    func write(_ path: String, _ value: String, tx: UInt32 = 0) async throws -> XenStoreMessage {
        try await exchange(XenStoreMessage(type: .write, requestID: 1, transactionID: tx, payload: Array("\(path)\0\(value)".utf8)).encoded())
    }

    /// Opens a transaction and returns its id.
    func startTransaction() async throws -> UInt32 {
        let r = try await request(.transactionStart, [""])
        guard r.type == .transactionStart, let id = UInt32(r.text) else {
            throw XenStoreError(.io, "TRANSACTION_START: \(r.text)")
        }
        return id
    }
}
