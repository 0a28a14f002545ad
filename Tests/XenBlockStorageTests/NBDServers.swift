import Foundation
import Glibc
import NBDProtocol
import TestSupport
@testable import XenBlockStorage

/// A real NBD server (nbdkit, qemu-nbd, nbd-server) run by a test on a Unix socket in a
/// temporary directory; its start waits with a bounded `eventually` until it accepts.
/// It can be stopped, continued, killed and started again on the same socket.
final class NBDServerProcess: @unchecked Sendable {
    // @unchecked: `process` is replaced only by restartBlocking, which a test calls from
    // one thread while nothing else signals the server.
    private(set) var process = Process()
    let socket: String
    let directory: TemporaryDirectory
    let exportName: String
    private let tool: String
    private let arguments: [String]
    private let ready: @Sendable (String) -> Bool
    var uri: NBDURI { NBDURI(endpoint: .unix(path: socket), exportName: exportName) }

    /// `nbdkit -f -U SOCKET <arguments>`.
    static func nbdkit(_ arguments: [String]) async throws -> NBDServerProcess {
        try await start("/usr/bin/nbdkit") { sock, _ in ["-f", "-U", sock] + arguments }
    }

    /// `qemu-nbd -k SOCKET -f raw --persistent IMAGE` (`--cache=none` would need O_DIRECT on tmpfs).
    static func qemuNBD(image: String) async throws -> NBDServerProcess {
        try await start("/usr/bin/qemu-nbd") { sock, _ in ["-k", sock, "-f", "raw", "--persistent", image] }
    }

    /// `nbd-server -d -C CONFIG`: in the foreground, serving `image` as export `disk`
    /// on the Unix socket only (no TCP port), with flush and trim offered.
    static func nbdServer(image: String) async throws -> NBDServerProcess {
        // It serves the first connection only: wait for it to listen without connecting.
        try await start("/usr/bin/nbd-server", exportName: "disk", ready: unixSocketListening) { sock, dir in
            let config = dir.path("nbd-server.conf")
            let text = "[generic]\nunixsock = \(sock)\n[disk]\nexportname = \(image)\nflush = true\ntrim = true\n"
            _ = FileManager.default.createFile(atPath: config, contents: Data(text.utf8))
            return ["-d", "-C", config]
        }
    }

    private static func start(_ tool: String, exportName: String = "", ready: @escaping @Sendable (String) -> Bool = unixSocketAccepts,
                              _ arguments: (String, TemporaryDirectory) -> [String]) async throws -> NBDServerProcess {
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-engine")
        let sock = dir.path("nbd.sock")
        let server = NBDServerProcess(socket: sock, directory: dir, exportName: exportName, tool: tool,
                                      arguments: arguments(sock, dir), ready: ready)
        try server.launch()
        let up = await eventually(60) { ready(server.socket) }
        guard up else {
            await server.stop()
            throw TimedOut(seconds: 60)
        }
        return server
    }

    private init(socket: String, directory: TemporaryDirectory, exportName: String, tool: String, arguments: [String],
                 ready: @escaping @Sendable (String) -> Bool) {
        self.ready = ready
        self.socket = socket
        self.directory = directory
        self.exportName = exportName
        self.tool = tool
        self.arguments = arguments
    }

    private func launch() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = arguments
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the running server.
    func send(_ signal: Int32) {
        if process.isRunning { Glibc.kill(process.processIdentifier, signal) }
    }

    /// On a thread of its own: SIGSTOP, and waits until every thread of the server is
    /// stopped (the signal takes effect after kill() returns), so nothing more is answered.
    func stopBlocking() throws {
        send(SIGSTOP)
        guard eventuallyBlocking(every: .milliseconds(1), { self.isStopped }) else { throw TimedOut(seconds: 180) }
    }

    /// Whether every thread of the server is in state T (stopped), by /proc/PID/task/*/stat.
    var isStopped: Bool {
        let pid = process.processIdentifier
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tasks.isEmpty else { return false }
        return tasks.allSatisfy { task in
            // "pid (comm) S ...": the state follows the last parenthesis.
            guard let stat = procFile("/proc/\(pid)/task/\(task)/stat"), let close = stat.lastIndex(of: ")") else { return false }
            return stat[stat.index(after: close)...].drop { $0 == " " }.first == "T"
        }
    }

    /// Kills the server (SIGKILL: mid-stream, as a crash) and awaits its end, bounded.
    func kill() async {
        await killAndAwait(process)
    }

    /// On a thread of its own: kills the server, starts the same command again on the
    /// same socket (the dead server's socket file removed) and waits until it accepts.
    func restartBlocking() throws {
        send(SIGKILL)
        guard eventuallyBlocking(every: .milliseconds(5), { !self.process.isRunning }) else { throw TimedOut(seconds: 180) }
        unlink(socket)
        try launch()
        guard eventuallyBlocking(every: .milliseconds(5), { self.ready(self.socket) }) else { throw TimedOut(seconds: 180) }
    }

    /// Ends the server (SIGKILL, its end awaited: never blocking a pool thread) and
    /// removes its directory. A test stops it in `withCleanup`, not a `defer`.
    func stop() async {
        await kill()
        directory.remove()
    }
}

/// Whether a socket listens at `path`, by /proc/net/unix (flag `__SO_ACCEPTCON`), without
/// connecting: for a server that serves its first connection only.
@Sendable func unixSocketListening(_ path: String) -> Bool {
    guard let table = procFile("/proc/net/unix") else { return false }
    return table.split(separator: "\n").contains { line in
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 8, fields[7] == Substring(path), let flags = UInt32(fields[3], radix: 16) else { return false }
        return flags & 0x10000 != 0
    }
}

/// Whether nbd-server is installed (`.ci/run` installs it).
let nbdServerInstalled = FileManager.default.isExecutableFile(atPath: "/usr/bin/nbd-server")

/// Whether the NBD servers are installed (`.ci/run` installs nbdkit and qemu-utils).
let nbdServersInstalled = ["nbdkit", "qemu-nbd"].allSatisfy {
    FileManager.default.isExecutableFile(atPath: "/usr/bin/" + $0)
}
