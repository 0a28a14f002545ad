import ArgumentParser
import Foundation
import XenSimulatorClient

/// `xenpv domain create`: dom0 makes a guest domain for another user's
/// process, which joins it with the printed token (`xenpv guest --token`).
struct DomainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domain",
        abstract: "Create guest domains for processes the hypervisor daemon does not trust.",
        subcommands: [DomainCreate.self])
}

struct DomainCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a guest domain with its devices; print its id and the token its guest joins with.",
        discussion: """
            Prints `DOMID TOKEN`. The domain waits 60 s for a process to join it with
            `xenpv guest --token TOKEN …` (or XENPV_DOMAIN_TOKEN=TOKEN), then is destroyed.
            """)

    @Option(help: "The hypervisor daemon's socket.")
    var connect: String

    @Option(help: "The guest's memory in 4 KiB frames.")
    var frames = 4096

    @Flag(help: "Give the guest a vbd (xvda).")
    var vbd = false

    @Flag(help: "Give the guest a vif.")
    var vif = false

    func validate() throws {
        guard frames >= 16, frames <= 262_144 else { throw ValidationError("--frames must be 16 to 262144, not \(frames)") }
    }

    func run() throws {
        let dom0 = try ProcessSupport.join(connect, as: .dom0)
        defer { dom0.close() }
        var devices: GuestDevices = []
        if vbd { devices.insert(.vbd) }
        if vif { devices.insert(.vif) }
        let (id, token) = try dom0.createDomain(frames: frames, devices: devices)
        print("\(id.rawValue) \(token)")
    }
}
