import Foundation
import Glibc
import NBDProtocol
import TestSupport
@testable import XenBlockStorage

/// A real NBD server (nbdkit, qemu-nbd) run by a test on a Unix socket in a temporary
/// directory; its start waits for the socket with a bounded `eventually`.
final class NBDServerProcess: @unchecked Sendable {
    // @unchecked: the process is started once and then only signalled.
    let process = Process()
    let socket: String
    let directory: TemporaryDirectory
    var uri: NBDURI { NBDURI(endpoint: .unix(path: socket), exportName: "") }

    /// `nbdkit -f -U SOCKET <arguments>`.
    static func nbdkit(_ arguments: [String]) async throws -> NBDServerProcess {
        try await start("/usr/bin/nbdkit") { ["-f", "-U", $0] + arguments }
    }

    /// `qemu-nbd -k SOCKET -f raw --persistent IMAGE` (`--cache=none` would need O_DIRECT on tmpfs).
    static func qemuNBD(image: String) async throws -> NBDServerProcess {
        try await start("/usr/bin/qemu-nbd") { ["-k", $0, "-f", "raw", "--persistent", image] }
    }

    private static func start(_ tool: String, _ arguments: (String) -> [String]) async throws -> NBDServerProcess {
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-engine")
        let server = NBDServerProcess(socket: dir.path("nbd.sock"), directory: dir)
        server.process.executableURL = URL(fileURLWithPath: tool)
        server.process.arguments = arguments(server.socket)
        server.process.standardInput = FileHandle.nullDevice
        server.process.standardOutput = FileHandle.nullDevice
        try server.process.run()
        let up = await eventually(60) { unixSocketAccepts(server.socket) }
        guard up else {
            server.stop()
            throw TimedOut(seconds: 60)
        }
        return server
    }

    private init(socket: String, directory: TemporaryDirectory) {
        self.socket = socket
        self.directory = directory
    }

    /// Kills the server (SIGKILL: mid-stream, as a crash) and waits for it, bounded.
    func kill() async {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        _ = await eventually(60) { !self.process.isRunning }
    }

    /// Ends the server and removes its directory.
    func stop() {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        directory.remove()
    }
}

/// Runs `body` on a thread of its own (the engine's calls block) and awaits its result.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let t = Thread { c.resume(with: Result { try body() }) }
        t.start()
    }
}

/// Whether the NBD servers are installed (`.ci/run` installs nbdkit and qemu-utils).
let nbdServersInstalled = ["nbdkit", "qemu-nbd"].allSatisfy {
    FileManager.default.isExecutableFile(atPath: "/usr/bin/" + $0)
}
