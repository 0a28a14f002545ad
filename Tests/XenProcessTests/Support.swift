import Foundation
import Glibc
import Logging
import TestSupport
import Testing
import XenSimulatorDaemon
import XenSimulatorClient

/// A temporary directory for sockets, removed by `cleanup`.
func temporaryDirectory() -> String {
    let dir = "/tmp/xpv-proc-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The `xenpv` executable `swift test` built next to the test bundle.
func xenpvPath() -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("xenpv").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return ".build/debug/xenpv"
}

/// A child process with its output collected as it comes; killed if still
/// running when the test lets go of it.
///
/// The output is read by a thread of its own polling the pipe, not by a
/// `readabilityHandler`: that handler is a libdispatch read source, and a pipe whose
/// write end a grandchild keeps (a guest program `xenpv create` starts) never reaches
/// end of file, so the source stayed registered while the descriptor was closed and
/// reused, and libdispatch's event loop crashed the test process.
final class Child: @unchecked Sendable {
    // @unchecked: `output` is guarded by `lock`; the process object is only
    // used from the test's thread.
    let process = Process()
    private let lock = NSLock()
    private var text = ""
    private var reading = 0
    private var reader: FileHandle?
    let name: String

    /// Runs `xenpv` (or `executable`) with `arguments`, in `directory` (default: this process's).
    init(_ arguments: [String], name: String, executable: String? = nil, directory: String? = nil) throws {
        self.name = name
        process.executableURL = URL(fileURLWithPath: executable ?? xenpvPath())
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let handle = pipe.fileHandleForReading
        reader = handle
        try process.run()
        // The thread holds the handle, so the descriptor stays open until it is done.
        Thread { [lock = self.lock, weak self] in
            let fd = handle.fileDescriptor
            var bytes = [UInt8](repeating: 0, count: 65536)
            while true {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&p, 1, 200)
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else {
                    // Ends with the pipe, or once the test has let go of the child.
                    if ready < 0 || self == nil { return }
                    continue
                }
                // `reading` is raised before the pipe is read and lowered after the
                // bytes are in `text`: see `outputIsWhole`.
                guard let child = self else { return }
                lock.withLock { child.reading += 1 }
                let n = read(fd, &bytes, bytes.count)
                lock.withLock {
                    if n > 0 { child.text += String(decoding: bytes[0..<n], as: UTF8.self) }
                    child.reading -= 1
                }
                if n <= 0 && !(n < 0 && errno == EINTR) { return }
            }
        }.start()
    }

    deinit { sendKill() }

    /// Under `swift test --sanitize=thread` the children are instrumented too:
    /// a report in their output is a failure like one in the test process.
    var sanitizerClean: Bool { !output.contains("WARNING: ThreadSanitizer") }

    var output: String { lock.withLock { text } }
    var pid: Int32 { process.processIdentifier }

    /// SIGKILL, by pid, if still running, and awaits its end (`killAndAwait`: bounded,
    /// never blocking a pool thread, as `waitUntilExit` did).
    func kill() async {
        await killAndAwait(process)
    }

    /// SIGKILL, by pid, if still running, without awaiting the end (Foundation's
    /// `Process` reaps it): for a `defer` or a `deinit` at the end of a test, which cannot
    /// await. A test that goes on after the kill awaits `kill()` instead.
    func sendKill() {
        if process.isRunning { Glibc.kill(pid, SIGKILL) }
    }

    func terminate() {
        if process.isRunning { Glibc.kill(pid, SIGTERM) }
    }

    /// Waits at most `seconds` (see `eventually`) for the process to end; its status, or nil.
    /// The output is whole once this returns a status (see `outputIsWhole`).
    func waitForExit(seconds: Double) async -> Int32? {
        guard await eventually(seconds, { !process.isRunning }) else { return nil }
        _ = await eventually(seconds) { outputIsWhole }
        return process.terminationStatus
    }

    /// After the exit, whether every byte the process wrote is in `output`:
    /// nothing left in the pipe and no read under way. (End of file is no sign:
    /// a process another test spawns meanwhile can inherit the pipe's write end.)
    private var outputIsWhole: Bool {
        guard let fd = reader?.fileDescriptor else { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        // POLLIN only while bytes wait in the pipe (at end of file: POLLHUP alone).
        let pending = poll(&p, 1, 0) == 1 && p.revents & Int16(POLLIN) != 0
        return !pending && lock.withLock { reading == 0 }
    }

    /// Waits at most `seconds` (see `eventually`) until the output contains `text`.
    func waitFor(_ text: String, seconds: Double = 20) async -> Bool {
        await eventually(seconds) { output.contains(text) }
    }
}

extension Child {
    /// `xenpv hypervisor --socket socket`, awaited until it says it listens; if it does not
    /// (within `waitFor`'s bound), an expectation fails at the caller with its output. The
    /// caller kills it (`defer { hv.sendKill() }`).
    static func hypervisor(socket: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Child {
        let hv = try Child(["hypervisor", "--socket", socket], name: "hypervisor")
        #expect(await hv.waitFor("listening"), "\(hv.output)", sourceLocation: sourceLocation)
        return hv
    }

    /// `nbdkit -f -U socket file image`, awaited (about 5 s at most) until its socket exists;
    /// if it does not, an expectation fails at the caller. The caller kills it.
    static func nbdkitFile(_ image: String, socket: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Child {
        let kit = try Child(["-f", "-U", socket, "file", image], name: "nbdkit", executable: "/usr/bin/nbdkit")
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { try await Task.sleep(for: .milliseconds(50)) }
        #expect(FileManager.default.fileExists(atPath: socket), "\(kit.output)", sourceLocation: sourceLocation)
        return kit
    }
}

/// A hypervisor daemon started in a fresh directory. A test awaits `stop()` at its end
/// (in `withCleanup`), which stops the daemon and removes the directory; the end of the
/// fixture only asks the daemon to stop.
final class DaemonFixture {
    let dir = temporaryDirectory()
    var socket: String { dir + "/hv.sock" }
    let daemon: HypervisorDaemon

    init(_ configure: (inout DaemonPolicy) -> Void = { _ in }) throws {
        var policy = DaemonPolicy()
        configure(&policy)
        daemon = HypervisorDaemon(socketPath: dir + "/hv.sock", policy: policy, logger: quietLogger())
        try daemon.start()
    }

    /// Stops the daemon and awaits its store's loop thread on a thread of its own (at most
    /// `minimumDeadline`), then removes the directory; whether the store ended.
    @discardableResult
    func stop() async -> Bool {
        let daemon = daemon
        let ended = await onThread { daemon.stop(timeout: minimumDeadline) }
        try? FileManager.default.removeItem(atPath: dir)
        return ended
    }

    /// Runs `body` with a fresh daemon's socket on a thread of its own (every call to the
    /// daemon is a blocking round trip, never made on the pool), then stops the daemon,
    /// whether or not `body` threw.
    static func withDaemon<T: Sendable>(_ body: @escaping @Sendable (_ socket: String) throws -> T) async throws -> T {
        let f = try DaemonFixture()
        let socket = f.socket
        return try await withCleanup { try await onThread { try body(socket) } } cleanup: { await f.stop() }
    }

    /// The last resort of a test that did not reach `stop()`: asks the daemon to stop and
    /// waits for nothing (a deinit may run on a pool thread), as `Child.sendKill` does.
    deinit {
        daemon.stop(timeout: 0)
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A raw seqpacket connection to the daemon at `path`, for speaking its wire protocol by hand.
func rawConnection(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else {
        close(fd)
        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
    }
    return fd
}

/// Descriptors `pid` holds now.
func descriptorCount(of pid: Int32) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
}

/// Threads of `pid` now.
func threadCount(of pid: Int32) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).count
}

/// A handler for tests: the daemon going away is an expected event, not a reason to exit.
let ignoreLoss: RemoteHypervisor.LostHandler = { _ in }

/// A logger that stays silent below critical.
func quietLogger() -> Logger {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}

/// Every suite of this target runs serially: the suites share the machine's
/// few cores with child processes and in-process daemons.
@Suite(.timeLimit(.minutes(5)), .serialized) enum ProcessTests {}
