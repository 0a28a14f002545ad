import ArgumentParser
import Foundation
import Glibc
import XenToolstack

/// `xenpv destroy DOM`: `xl destroy`. Kills the program, removes the devices,
/// destroys the domain; nothing of it is left in the daemon or the store.
struct DestroyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy", abstract: "Destroy a domain at once: its program, its devices, the domain.")

    @Argument(help: "The domain's name or id.")
    var domain: String

    @OptionGroup var options: ToolstackOptions

    @Option(help: "Seconds to wait for everything to be gone.")
    var timeout = 60.0

    func validate() throws {
        guard timeout > 0, timeout <= 86_400 else { throw ValidationError("--timeout must be more than 0 and at most 86400 seconds, not \(timeout)") }
    }

    func run() async throws {
        try await toolstackStep {
            let state = try options.state()
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            try await DomainStopper.destroy(found, toolstack: toolstack, state: state, timeout: timeout)
            say("Destroyed domain \(found.name) (id=\(found.id.rawValue))")
        }
    }
}

/// The end of a domain, for `destroy` and `shutdown`.
enum DomainStopper {
    static func destroy(_ domain: DomainSummary, toolstack: Toolstack, state: StateDirectory, timeout: Double) async throws {
        let record = state.record(domain.name).flatMap { $0.domid == domain.id.rawValue ? $0 : nil }
        record?.program?.signal(SIGKILL)
        try await toolstack.destroy(domain.id, timeout: timeout)
        if record != nil { state.removeRecord(domain.name) }
    }
}
