import ArgumentParser
import Foundation
import XenABI
import XenToolstack

/// `xenpv save DOM FILE`: `xl save`.
struct SaveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save",
        abstract: "Suspend a domain, write it to a file, and release it on this host; its program waits for `xenpv restore`.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The file to write.") var file: String
    @OptionGroup var options: ToolstackOptions
    @Option(help: "Seconds to wait for the guest to suspend.") var timeout = 30.0

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            let bytes = try await transferStep { try await toolstack.save(found.id, to: file, timeout: timeout) }
            say("Saved domain \(found.name) (id=\(found.id.rawValue)) to \(file): \(bytes) bytes")
        }
    }
}

/// `xenpv restore FILE [--to HOST-SOCKET]`: `xl restore`.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Create a saved domain again (on this host or --to another) and resume its waiting program there.")

    @Argument(help: "The file `xenpv save` wrote.") var file: String
    @Option(help: "The destination hypervisor daemon's socket (default: this host, --connect).") var to: String?
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let destination = try to.map { try Toolstack(socketPath: $0) }
            defer { destination?.close() }
            let socket = try to ?? options.socket()
            let (restored, resumed) = try await transferStep {
                try await toolstack.restore(from: file, to: destination, destinationSocket: socket)
            }
            say("Restored domain \(restored.name) (id=\(restored.domain.rawValue)) on \(socket)")
            if !resumed { say("No saved program waits for it here; a guest joins it with --token \(restored.token)") }
        }
    }
}

/// `xenpv migrate DOM --to HOST-SOCKET`: `xl migrate`, pre-copy then stop-and-copy.
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate", abstract: "Live-migrate a domain to another hypervisor daemon.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Option(help: "The destination hypervisor daemon's socket.") var to: String
    @OptionGroup var options: ToolstackOptions
    @Option(help: "Pre-copy rounds at most.") var rounds = 30
    @Option(help: "Seconds to wait for the guest to suspend and to arrive.") var timeout = 30.0
    @Option(help: ArgumentHelp("Seconds to keep the guest paused before the last copy (tests a destination failing then).", visibility: .hidden))
    var holdPaused = 0.0

    func validate() throws {
        guard holdPaused >= 0, holdPaused <= 600 else { throw ValidationError("--hold-paused must be 0 to 600 seconds") }
        guard rounds >= 1, rounds <= 1000 else { throw ValidationError("--rounds must be 1 to 1000, not \(rounds)") }
    }

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let destination = try Toolstack(socketPath: to)
            defer { destination.close() }
            let found = try await toolstack.resolve(domain)
            var budget = DomainMover.Budget()
            budget.rounds = rounds
            budget.holdPaused = holdPaused
            let figures = try await transferStep {
                try await toolstack.migrate(found.id, to: destination, destinationSocket: to, budget: budget, timeout: timeout)
            }
            say("Migrated domain \(found.name) (id=\(found.id.rawValue)) to \(to)")
            say("\(figures)")
        }
    }
}

/// Turns a transfer's errors into one-line command errors.
func transferStep<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as DomainTransferError {
        throw CommandError("\(error)")
    } catch let error as ToolstackError {
        throw CommandError("\(error)")
    } catch {
        throw CommandError("\(error)")
    }
}
