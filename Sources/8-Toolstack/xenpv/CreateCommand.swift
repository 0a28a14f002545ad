import ArgumentParser
import Foundation
import Glibc
import XenToolstack
import XenWorld

/// `xenpv create CFG [-c]`: `xl create`. Creates the domain a config file describes,
/// plugs its disks and vifs, starts its program in it.
struct CreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a domain from an xl.cfg file, plug its devices and start its program.",
        discussion: """
            The program (`kernel`, with `extra` split into arguments) runs with XENPV_DOMAIN_TOKEN and
            XENPV_HYPERVISOR_SOCKET in its environment, so `xenpv guest …` or any program that joins
            with JoinedDomain joins this domain. Its output goes to STATE/console/guest-NAME.log.
            """)

    @Argument(help: "The domain's config file (xl.cfg syntax).")
    var config: String

    @OptionGroup var options: ToolstackOptions

    @Flag(name: .customShort("c"), help: "Follow the console until the program exits.")
    var console = false

    @Option(help: "Seconds to watch the program after its start (without -c): if it fails (exits non-zero or by a signal) in that time, create destroys the domain and fails. 0: do not watch.")
    var watch = 1.0

    func validate() throws {
        guard watch >= 0, watch <= 3600 else { throw ValidationError("--watch must be 0 to 3600 seconds, not \(watch)") }
    }

    func run() async throws {
        let exitStatus = try await toolstackStep { () async throws -> Int32 in
            let path = URL(fileURLWithPath: config).standardizedFileURL.path
            let domain = try DomainConfig(contentsOfFile: path)
            let state = try options.state()
            try state.prepare()
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let log = state.consoleLog(domain.name)
            let start = (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? UInt64) ?? 0
            let started = try await DomainStarter.start(domain, configPath: path, toolstack: toolstack, state: state,
                                                         socket: try options.socket())
            if !console, let program = started.program,
                let failure = await EarlyExit.watch(program, seconds: watch, log: log, from: start)
            {
                try? await toolstack.destroy(.init(started.domid))
                state.removeRecord(domain.name)
                throw CommandError("domain \(domain.name) (id=\(started.domid)): its kernel \(failure); the domain is destroyed")
            }
            say("Started domain \(domain.name) (id=\(started.domid))")
            guard console, let program = started.program else { return 0 }
            let status = await ConsoleFollower.follow(log, from: start, until: program)
            // The program left its domain; the daemon tears it down. Wait for that, bounded.
            _ = await toolstack.waitUntilGone(.init(started.domid), timeout: 60)
            state.removeRecord(domain.name)
            return status
        }
        if exitStatus != 0 { throw ExitCode(exitStatus) }
    }
}

/// Creating a domain and starting its program: `create`, and a reboot's restart.
enum DomainStarter {
    static func start(_ config: DomainConfig, configPath: String, toolstack: Toolstack, state: StateDirectory,
                      socket: String) async throws -> DomainRecord {
        let created = try await toolstack.create(config)
        var record = DomainRecord(name: config.name, domid: created.id.rawValue, uuid: created.uuid, configPath: configPath)
        let environment = [
            JoinedDomain.tokenVariable: "\(created.token)", JoinedDomain.socketVariable: socket,
            "XENPV_DOMAIN_NAME": config.name, "XENPV_DOMAIN_ID": "\(created.id.rawValue)",
        ]
        do {
            record.program = try GuestProgram.start(
                config.kernel, arguments: config.arguments, environment: environment, log: state.consoleLog(config.name),
                directory: FileManager.default.currentDirectoryPath)
            try state.save(record)
        } catch {
            record.program?.signal(SIGKILL)
            try? await toolstack.destroy(created.id)
            throw error
        }
        return record
    }
}

/// `-c`: copies a console log to standard output as it grows, until its program exits.
enum ConsoleFollower {
    /// The program's exit status (0 when it is not this process's child or was killed by a signal: unknown).
    static func follow(_ log: String, from offset: UInt64, until program: GuestProgram) async -> Int32 {
        guard let handle = FileHandle(forReadingAtPath: log) else { return 0 }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        var status: Int32 = 0
        while true {
            var raw: Int32 = 0
            let reaped = waitpid(program.pid, &raw, WNOHANG)
            let exited = reaped == program.pid || (reaped < 0 && !program.isRunning)
            if reaped == program.pid, raw & 0x7f == 0 { status = (raw >> 8) & 0xff }
            if let data = try? handle.readToEnd(), !data.isEmpty { FileHandle.standardOutput.write(data) }
            if exited { return status }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
    }
}

/// A kernel that fails at once (a bad argument, a missing world): `create` reports it
/// instead of a domain that looks started and is already dead.
enum EarlyExit {
    /// Waits at most `seconds` for the program (this process's child) to end; how it
    /// failed, with its console's last lines from `offset`, or nil if it still runs or
    /// exited 0.
    static func watch(_ program: GuestProgram, seconds: Double, log: String, from offset: UInt64) async -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            var raw: Int32 = 0
            let reaped = waitpid(program.pid, &raw, WNOHANG)
            if reaped == program.pid {
                let signal = raw & 0x7f
                let status = (raw >> 8) & 0xff
                guard signal != 0 || status != 0 else { return nil }
                let how = signal != 0 ? "was killed by signal \(signal)" : "exited with status \(status)"
                return how + lastLines(of: log, from: offset)
            }
            if reaped < 0 || Date() >= deadline { return nil }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// The console's last three lines from `offset`, after a colon; empty if none.
    static func lastLines(of log: String, from offset: UInt64) -> String {
        guard let handle = FileHandle(forReadingAtPath: log) else { return "" }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        let text = String(decoding: (try? handle.readToEnd())?.suffix(4096) ?? Data(), as: UTF8.self)
        let lines = text.split(separator: "\n").suffix(3)
        return lines.isEmpty ? "" : ": " + lines.joined(separator: " / ")
    }
}
