import Foundation
import Glibc
import Logging
import NBDProtocol
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBlockExport
import XenBlockFront
import XenBus
import XenEmbeddedHost
import XenHypervisor
import XenSimulator
import XenNetBack
import XenStore

/// What a finished client program printed and how it ended.
struct ToolRun: CustomStringConvertible {
    let status: Int32
    let output: String
    var description: String { "exit \(status): \(output)" }
}

/// Runs a real NBD client (`nbdinfo`, `qemu-io`, …) and waits for it by looking every
/// 20 ms (never blocking a pool thread); killed if it runs past `seconds`.
func runTool(_ tool: String, _ arguments: [String], seconds: Double = 180) async throws -> ToolRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/" + tool)
    process.arguments = arguments
    let log = FileManager.default.temporaryDirectory.appendingPathComponent("nbd-tool-\(UUID().uuidString).log")
    FileManager.default.createFile(atPath: log.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: log) }
    let handle = try FileHandle(forWritingTo: log)
    process.standardOutput = handle
    process.standardError = handle
    process.standardInput = FileHandle.nullDevice
    try process.run()
    try? handle.close()
    let finished = await eventually(seconds, every: .milliseconds(20)) { !process.isRunning }
    if !finished {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    guard finished else { throw TimedOut(seconds: seconds) }
    return ToolRun(status: process.terminationStatus, output: output)
}

/// Whether the NBD tools are installed (`.ci/run` installs them).
let nbdToolsInstalled = ["nbdinfo", "nbdcopy", "qemu-io", "qemu-img"].allSatisfy {
    FileManager.default.isExecutableFile(atPath: "/usr/bin/" + $0)
}

/// A guest's vbd on a real image file through an embedded host (simulated hypervisor,
/// xenstored, blkback on libaio), connected, with its `BlockFrontend`.
final class PVDisk: @unchecked Sendable {
    // @unchecked: set up once, then only read; `close()` is called once.
    let directory: TemporaryDirectory
    let image: String
    let host: EmbeddedHost
    let frontend: BlockFrontend
    private let endpoint: XenbusEndpoint
    private let task: Task<Void, Error>
    private let vbd: XenbusDevice
    /// The vbd's backend directory, where blkback advertises what it offers.
    var backendPath: String { vbd.backendPath }
    private let sharer: any GrantSharer

    /// `params`: the vbd's target when not the image itself (an NBD URI serving it).
    static func make(bytes: Int, readOnly: Bool = false, params: ((String) async throws -> String)? = nil) async throws -> PVDisk {
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd")
        let image = dir.path("disk.img")
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(bytes)) == 0 else {
            throw TimedOut(seconds: 0)
        }
        var logger = Logger(label: "nbd-test")
        logger.logLevel = .warning
        let host = try EmbeddedHost(directory: URL(fileURLWithPath: dir.path), logger: logger) { _, _ in EchoAttachment.make() }
        try await host.startBlockBackend()
        let guest = try await host.createGuest(frames: 4096)
        let guestStore = try host.store(for: guest.domainID)
        let vbd = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        let target = try await params?(image) ?? image
        try await XenbusToolstack.create(vbd, on: host.store,
                                         backendKeys: ["params": target, "mode": readOnly ? "r" : "w", "type": "file"])
        let sharer = try guest.openGrantSharer()
        let driver = BlockFrontendDriver(device: vbd, store: guestStore, hypervisor: guest, sharer: sharer)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vbd.frontendPath, peerPath: vbd.backendPath,
                                      driver: driver, logger: logger)
        let task = Task { try await endpoint.run() }
        try await endpoint.connected(timeout: .seconds(120))
        return PVDisk(directory: dir, image: image, host: host, frontend: driver.frontend, endpoint: endpoint, task: task,
                      vbd: vbd, sharer: sharer)
    }

    private init(directory: TemporaryDirectory, image: String, host: EmbeddedHost, frontend: BlockFrontend,
                 endpoint: XenbusEndpoint, task: Task<Void, Error>, vbd: XenbusDevice, sharer: any GrantSharer) {
        self.directory = directory
        self.image = image
        self.host = host
        self.frontend = frontend
        self.endpoint = endpoint
        self.task = task
        self.vbd = vbd
        self.sharer = sharer
    }

    /// Unplugs the vbd and stops the host; the hypervisor's leftovers.
    func close() async throws -> Leftovers {
        endpoint.requestClose()
        try await task.value
        try await XenbusToolstack.remove(vbd, on: host.store)
        sharer.close()
        let leftovers = await host.shutdown()
        directory.remove()
        return leftovers
    }
}

/// A hand-driven NBD client on a Unix socket: the bytes a hostile client sends.
final class RawClient {
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

/// The SHA-256 of a file, by `sha256sum` (run like the other tools).
func sha256(_ path: String) async throws -> String {
    let run = try await runTool("sha256sum", [path])
    return String(run.output.prefix(64))
}
