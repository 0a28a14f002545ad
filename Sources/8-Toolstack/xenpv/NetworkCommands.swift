import ArgumentParser
import Foundation
import XenABI
import XenBus
import XenToolstack

/// `xenpv network-attach DOM [mac=…] [bridge=…] [ip=…] [script=…]`: `xl network-attach`.
struct NetworkAttachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network-attach",
        abstract: "Plug a vif (xl VIFSPEC keys) into a running domain.",
        discussion: """
            Each argument is one key=value of a config's vif entry: mac, bridge, ip (blank-separated, so quote it),
            script (vif-bridge, vif-route, vif-nat), rate, vifname. The backend sets the host's side up as script says.
            """)

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The vif's keys: mac=00:16:3e:… bridge=xenbr0 ip=192.0.2.10 script=vif-route") var keys: [String] = []
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            // The keys as one VIFSPEC, so they are checked exactly as a config's vif.
            guard !keys.contains(where: { $0.contains(",") }) else {
                throw CommandError("give each vif key as its own argument (key=value), without commas")
            }
            let spec = try VifSpec(parsing: keys.joined(separator: ","))
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            let device = try await toolstack.attachVif(spec, to: found.id)
            say("Attached vif \(device.id) (\(spec.script.rawValue)) to \(found.name)")
        }
    }
}

/// `xenpv network-detach DOM DEVID|MAC`: `xl network-detach`.
struct NetworkDetachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network-detach",
        abstract: "Unplug a vif from a running domain: ask the backend to close, wait (bounded), remove.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The vif's devid (0) or MAC address.") var vif: String
    @OptionGroup var options: ToolstackOptions
    @OptionGroup var detach: DetachOptions

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            let device = try await toolstack.vif(vif, of: found.id)
            try await toolstack.detachVif(device, timeout: detach.timeout, force: detach.force)
            say("Detached vif \(device.id) from \(found.name)")
        }
    }
}

/// `xenpv network-list DOM`: `xl network-list`'s columns, from the domain's frontend directories.
struct NetworkListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network-list", abstract: "List a domain's vifs as xl network-list does.")

    @Argument(help: "The domain's name or id.") var domain: String
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            let store = try options.store()
            defer { store.close() }
            let found = try await Toolstack.resolve(domain, in: store)
            let base = "/local/domain/\(found.id.rawValue)/device/vif"
            print("Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path")
            for dev in ((try? await store.directory(base)) ?? []).compactMap(UInt32.init).sorted() {
                let dir = "\(base)/\(dev)"
                func key(_ k: String) async -> String { String(((try? await store.readIfPresent(dir + "/" + k)) ?? nil ?? "-").prefix(80)) }
                let fields = [await key("backend-id"), await key("mac"), await key("handle"), await key("state"),
                              await key("event-channel"), "\(await key("tx-ring-ref"))/\(await key("rx-ring-ref"))", await key("backend")]
                print("\(dev)   \(fields.joined(separator: " "))")
            }
        }
    }
}
