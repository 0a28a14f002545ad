import Foundation
import XenLocks

/// One of the host's network tools (`ip`, `sysctl`, `nft`) run for a vif's hotplug, as
/// Xen's scripts run them; on a thread of its own, so an async caller never blocks the
/// cooperative pool while the tool runs, and bounded: a tool still running after 30 s is
/// killed and counts as failed. A guest command that sets up its own NIC runs the same
/// tools through ``runBlocking(_:)``.
public struct HostCommand: Sendable {
    /// The network namespace the tools act in (`ip netns exec NAME`), nil for the caller's.
    var namespace: String?

    /// What a tool printed and how it ended.
    public struct Outcome: Sendable {
        /// Its exit status (-1: it could not be started).
        public var status: Int32
        /// What it printed (standard output and error), at most 64 KiB.
        public var output: String

        /// Why `arguments` failed, for an error message: the command, its status and the
        /// start of what it printed.
        public func failure(of arguments: [String]) -> String {
            let said = output.trimmingCharacters(in: .whitespacesAndNewlines).prefix(300)
            return "`\(arguments.joined(separator: " "))` failed (status \(status))" + (said.isEmpty ? "" : ": \(said)")
        }
    }

    /// Runs `arguments` (found on `PATH`, with `/usr/sbin` and `/sbin` added) and returns
    /// its output when it exits 0.
    /// - Throws: ``NetBackendError`` `.hotplug` naming the command and its output otherwise.
    @discardableResult
    func run(_ arguments: [String]) async throws(NetBackendError) -> String {
        let outcome = await launch(arguments)
        guard outcome.status == 0 else { throw NetBackendError(.hotplug, outcome.failure(of: arguments)) }
        return outcome.output
    }

    /// Runs `arguments` whatever its status (for undoing what may not be there).
    func launch(_ arguments: [String]) async -> Outcome {
        let argv = (namespace.map { ["ip", "netns", "exec", $0] } ?? []) + arguments
        return await withCheckedContinuation { (done: CheckedContinuation<Outcome, Never>) in
            startDetachedThread(named: "xenpv-hotplug") { done.resume(returning: Self.runBlocking(argv)) }
        }
    }

    /// Runs `argv` (found on `PATH`, with `/usr/sbin` and `/sbin` added) on the calling
    /// thread, which it blocks until the tool exits or is killed after 30 s: never from
    /// the cooperative pool.
    public static func runBlocking(_ argv: [String]) -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = argv
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = (environment["PATH"].map { $0 + ":" } ?? "") + "/usr/sbin:/sbin:/usr/bin:/bin"
        environment["LC_ALL"] = "C"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch {
            return Outcome(status: -1, output: "cannot start \(argv.first ?? ""): \(error)")
        }
        let deadline = Date().addingTimeInterval(30)
        startDetachedThread(named: "tool-watchdog") {
            while process.isRunning {
                if Date() > deadline { process.terminate(); return }
                usleep(20_000)
            }
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, output: String(decoding: data.prefix(65536), as: UTF8.self))
    }
}
