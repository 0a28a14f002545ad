import ArgumentParser
import Foundation
import Glibc
import XenBus
import XenToolstack

/// `xenpv shutdown DOM [--reboot]`: `xl shutdown` / `xl reboot` through the PV control
/// protocol. Writes `control/shutdown`, waits (bounded) for the guest to leave, destroys
/// it if it did not; then `on_poweroff` / `on_reboot` from its config decide: `restart`
/// creates it again, anything else leaves it destroyed.
struct ShutdownCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shutdown",
        abstract: "Ask a domain to power off (or reboot) through control/shutdown; destroy it if it does not in time.")

    @Argument(help: "The domain's name or id.")
    var domain: String

    @OptionGroup var options: ToolstackOptions

    @Flag(help: "Ask for a reboot instead of a poweroff.")
    var reboot = false

    @Option(help: "Seconds the guest gets to shut down before it is destroyed.")
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
            let request: ShutdownRequest = reboot ? .reboot : .poweroff
            let record = state.record(found.name).flatMap { $0.domid == found.id.rawValue ? $0 : nil }
            try await toolstack.requestShutdown(found.id, request)
            say("Asked domain \(found.name) (id=\(found.id.rawValue)) to \(request.rawValue)")
            if await toolstack.waitUntilGone(found.id, timeout: timeout) {
                say("Domain \(found.name) shut down")
                // It left its domain; a program that lingers after that is ended all the same.
                record?.program?.signal(SIGKILL)
                if record != nil { state.removeRecord(found.name) }
            } else {
                say("Domain \(found.name) did not shut down in \(timeout) s; destroying it")
                try await DomainStopper.destroy(found, toolstack: toolstack, state: state, timeout: 60)
            }
            guard let record, let config = try? DomainConfig(contentsOfFile: record.configPath) else { return }
            let action = reboot ? config.onReboot : config.onPoweroff
            guard action == .restart else {
                if action != .destroy { say("on_\(reboot ? "reboot" : "poweroff") = \(action.rawValue) is not kept here; destroyed") }
                return
            }
            let again = try await DomainStarter.start(config, configPath: record.configPath, toolstack: toolstack, state: state,
                                                       socket: try options.socket())
            say("Restarted domain \(config.name) (id=\(again.domid))")
        }
    }
}
