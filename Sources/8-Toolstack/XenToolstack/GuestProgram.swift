import CXen
import Foundation
import Glibc

/// A guest's program as the toolstack starts it: `kernel` with `extra`'s arguments,
/// in a session of its own, its standard output and error appended to the domain's
/// console log, its domain named in its environment.
public struct GuestProgram: Hashable, Sendable, Codable {
    /// The process id.
    public var pid: Int32
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// with the pid, it tells this process from a later one that reuses the pid.
    public var startTicks: UInt64

    /// A program record from its parts.
    public init(pid: Int32, startTicks: UInt64) {
        self.pid = pid
        self.startTicks = startTicks
    }

    /// Starts `path` with `arguments` and `environment` added to this process's, its
    /// output appended to `log`. A relative `path` is taken from `directory` (xl takes
    /// it from its working directory).
    /// - Throws: ``ToolstackError`` `.program`.
    public static func start(_ path: String, arguments: [String], environment: [String: String], log: String,
                             directory: String) throws(ToolstackError) -> GuestProgram {
        let executable = path.hasPrefix("/") ? path : (directory as NSString).appendingPathComponent(path)
        guard access(executable, X_OK) == 0 else {
            throw ToolstackError(.program, "the kernel \(executable.debugDescription) is not an executable: \(String(cString: strerror(errno)))")
        }
        let logFD = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard logFD >= 0 else {
            throw ToolstackError(.program, "cannot open the console log \(log): \(String(cString: strerror(errno)))")
        }
        defer { close(logFD) }
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let argv = [executable] + arguments
        let envp = env.map { "\($0.key)=\($0.value)" }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        // Nothing else of the toolstack's: a descriptor left open would keep, say, the
        // caller's end-of-process socket or pipe alive as long as the guest runs.
        cxen_spawn_close_from(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc): its own session, so a terminal's signals to the
        // toolstack's command do not reach the guest.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        var pid: pid_t = 0
        let rc = withCStrings(argv) { a in withCStrings(envp) { e in posix_spawn(&pid, executable, &actions, &attributes, a, e) } }
        guard rc == 0 else {
            throw ToolstackError(.program, "cannot start \(executable): \(String(cString: strerror(rc)))")
        }
        return GuestProgram(pid: pid, startTicks: Self.startTicks(of: pid) ?? 0)
    }

    /// Whether the recorded process is still this program (not exited, not a reused pid).
    public var isRunning: Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let ticks = Self.startTicks(of: pid) else { return false }
        // A zombie is an exited program still waiting for its parent.
        return ticks == startTicks && Self.state(of: pid) != "Z"
    }

    /// Sends `signal` if the recorded process is still this program.
    public func signal(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// `/proc/PID/stat` after the command name (which may hold blanks and parentheses).
    static func statFields(of pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    static func startTicks(of pid: Int32) -> UInt64? {
        // Field 22 overall; the fields after the name start at field 3.
        guard let f = statFields(of: pid), f.count > 19 else { return nil }
        return UInt64(f[19])
    }

    static func state(of pid: Int32) -> Substring? { statFields(of: pid)?.first }
}

/// Runs `body` with `strings` as a NULL-terminated C array.
private func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    return body(pointers)
}
