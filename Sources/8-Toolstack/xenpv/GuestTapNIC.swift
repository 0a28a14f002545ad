import ArgumentParser
import Foundation
import Glibc
import Logging
import XenABI
import XenBus
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenNetTap
import XenStore
import XenToolstack
import XenWorld

/// `--netns NAME`: the guest's vif as a real Linux NIC. The options of a guest command
/// that puts one of its domain's vifs on a TAP (netfront's `TapGuestPort`) in a network
/// namespace, so that namespace's own Linux stack is the guest's and uses the PV NIC.
struct GuestTapOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Put the domain's vif on a TAP in this network namespace (/run/netns/NAME; made, and removed at exit, if it is not there), addressed as its vif's script implies.",
        valueName: "NAME"))
    var netns: String?

    @Option(name: .customLong("vif"), help: "The vif's devid.")
    var vifID: UInt32 = 0

    @Option(help: "The TAP's name in the namespace.")
    var tapName = "eth0"

    @Option(help: ArgumentHelp(
        "Queues to ask the backend for (1 to 16; it may offer fewer): a ring pair and a TAP queue each, so flows spread over cores.",
        valueName: "N"))
    var queues = 1

    @Option(help: ArgumentHelp(
        "The guest's address instead of the one its vif's ip and script imply (vif-route: IP/32, vif-nat: IP/30, vif-bridge: IP/24), or none.",
        valueName: "A.B.C.D/N"))
    var address: String?

    @Option(help: ArgumentHelp("The default route's gateway instead of the one the vif's script implies (vif-route: out of the vif, answered by the host's proxy ARP; vif-nat: the host's end of the /30).", valueName: "A.B.C.D"))
    var gateway: String?

    func validate() throws {
        if let netns {
            // What `ip netns` takes as a name and nothing a path or a shell reads specially.
            let ok = !netns.isEmpty && netns.utf8.count <= 64 && netns != "." && netns != ".."
                && netns.utf8.allSatisfy { Self.nameByte($0) }
            guard ok else { throw ValidationError("--netns must be 1 to 64 of A-Z a-z 0-9 _ . -, not \(netns.debugDescription)") }
        }
        guard (1...16).contains(queues) else { throw ValidationError("--queues must be 1 to 16, not \(queues)") }
        let nameOK = !tapName.isEmpty && tapName.utf8.count <= 15 && tapName.utf8.allSatisfy { Self.nameByte($0) }
            && tapName != "." && tapName != ".."
        guard nameOK else { throw ValidationError("--tap-name must be 1 to 15 of A-Z a-z 0-9 _ . -, not \(tapName.debugDescription)") }
        if let address, address != "none" {
            guard let parsed = GuestVifAddressing.parseAddress(address), parsed.prefix != nil else {
                throw ValidationError("--address must be A.B.C.D/N or none, not \(address.debugDescription)")
            }
        }
        if let gateway, IPv4Address(gateway) == nil {
            throw ValidationError("--gateway must be an IPv4 address A.B.C.D, not \(gateway.debugDescription)")
        }
        if netns == nil, address != nil || gateway != nil {
            throw ValidationError("--address and --gateway go with --netns")
        }
    }

    private static func nameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
            || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")
    }

    /// The addressing the options ask for over what the vif's keys imply.
    func addressing(over implied: GuestVifAddressing) -> GuestVifAddressing {
        var out = implied
        if let address {
            if address == "none" {
                out.address = nil
            } else if let parsed = GuestVifAddressing.parseAddress(address) {
                out.address = parsed.address
                out.prefix = parsed.prefix ?? out.prefix
            }
        }
        if let gateway, let g = IPv4Address(gateway) { out.defaultRoute = .via(g) }
        return out
    }
}

/// One vif of the guest's domain as a Linux NIC in a network namespace: a TAP opened in
/// the namespace, netfront pumping frames between it and the rings, its MAC the vif's,
/// its address and default route as ``GuestVifAddressing`` says.
final class GuestTapNIC: @unchecked Sendable {
    // @unchecked: immutable after init apart from `tasks`, touched by the command's thread only.
    let namespace: String
    let tap: TapDevice
    /// The TAP's further queues (`--queues`), open for as long as `tap`.
    let moreQueues: [TapDevice]
    let endpoint: XenbusEndpoint
    let addressing: GuestVifAddressing
    private let madeNamespace: Bool
    private var tasks: [Task<Void, Never>] = []

    init(_ hv: JoinedDomain, _ options: GuestTapOptions, namespace: String, connectTimeout: Double, logger: Logger) throws {
        self.namespace = namespace
        let path = "/run/netns/" + namespace
        let made = !FileManager.default.fileExists(atPath: path)
        madeNamespace = made
        if made { try HostTool.run(["ip", "netns", "add", namespace]) }
        var opened: TapDevice?
        var more: [TapDevice] = []
        var started = false
        defer {
            if !started {
                more.forEach { $0.close() }
                opened?.close()
                if made { _ = try? HostTool.run(["ip", "netns", "del", namespace]) }
            }
        }
        do {
            try NetworkNamespace.run(in: path) {
                let first = try TapDevice(name: options.tapName, vnetHeader: true, multiQueue: options.queues > 1)
                opened = first
                for _ in 1..<options.queues { more.append(try first.openQueue()) }
            }
        } catch {
            throw CommandError("cannot make TAP \(options.tapName) in network namespace \(namespace): \(error)")
        }
        guard let tap = opened else { throw CommandError("cannot make TAP \(options.tapName)") }
        self.tap = tap
        moreQueues = more
        let device = XenbusDevice(type: "vif", id: options.vifID, frontend: hv.domainID)
        let store = hv.store
        let keys = try ProcessSupport.runBlocking { () async throws -> [String: String] in
            var found: [String: String] = [:]
            for key in ["script", "ip"] { found[key] = try await store.readIfPresent(device.backendPath + "/" + key) }
            found["mac"] = try await store.readIfPresent(device.frontendPath + "/mac")
            return found
        }
        do {
            addressing = options.addressing(over: try GuestVifAddressing(backendKeys: keys, domain: hv.domainID, devid: options.vifID))
        } catch {
            throw CommandError("vif \(options.vifID): \(error.message)")
        }
        // The vif's MAC (the frontend's `mac`, as Linux's netfront takes it), then the link up
        // with its address before the handshake: netfront delivers into the TAP as soon as
        // it connects, and a TAP that is down refuses frames.
        if let mac = keys["mac"], let parsed = MACAddress(mac) {
            try HostTool.run(["ip", "-n", namespace, "link", "set", "dev", tap.name, "address", parsed.description])
        }
        try Self.configure(tap.name, in: namespace, addressing)
        let frontend = NetFrontendDriver(hypervisor: hv, store: store, path: device.frontendPath, port: TapGuestPort(tap: tap, moreQueues: more),
                                         queues: options.queues, logger: logger)
        endpoint = XenbusEndpoint(role: .frontend, store: store, path: device.frontendPath, peerPath: device.backendPath,
                                  driver: frontend, logger: logger)
        let endpoint = self.endpoint
        tasks.append(Task { try? await endpoint.run() })
        started = true
        do {
            try ProcessSupport.runBlocking { try await endpoint.connected(timeout: .seconds(connectTimeout)) }
        } catch {
            close()
            throw CommandError("vif \(options.vifID)'s backend did not connect in \(connectTimeout) s (is `xenpv backend` running? a hotplug failure is in the backend directory's error key)")
        }
        let route: String
        switch addressing.defaultRoute {
        case .none: route = "no default route"
        case .onLink: route = "default route out of \(tap.name)"
        case .via(let g): route = "default route via \(g)"
        }
        say("xenpv guest: vif \(options.vifID) is \(tap.name) in network namespace \(namespace)"
            + " (\(addressing.script.rawValue), \(addressing.cidr ?? "no address"), \(route))")
    }

    /// Brings the namespace's loopback and the TAP up with the address and default route.
    private static func configure(_ name: String, in namespace: String, _ addressing: GuestVifAddressing) throws {
        let ns = ["ip", "-n", namespace]
        try HostTool.run(ns + ["link", "set", "dev", "lo", "up"])
        try HostTool.run(ns + ["link", "set", "dev", name, "up"])
        if let cidr = addressing.cidr { try HostTool.run(ns + ["addr", "add", cidr, "dev", name]) }
        switch addressing.defaultRoute {
        case .none: break
        case .onLink: try HostTool.run(ns + ["route", "replace", "default", "dev", name])
        case .via(let gateway): try HostTool.run(ns + ["route", "replace", "default", "via", gateway.description, "dev", name])
        }
    }

    /// Ends the handshake's task and removes the namespace's name if this NIC made it. The
    /// TAP stays open (netfront's thread may still use it) until the process exits; then the
    /// kernel removes it with its addresses and routes, and the namespace with its last user.
    func close() {
        for t in tasks { t.cancel() }
        tasks = []
        if madeNamespace { _ = try? HostTool.run(["ip", "netns", "del", namespace]) }
    }
}

/// A host tool (`ip`) run from a guest command's thread, as netback's hotplug runs them
/// (``HostCommand``: bounded, killed after 30 s); a failure is a `CommandError`.
enum HostTool {
    @discardableResult
    static func run(_ arguments: [String]) throws -> String {
        let outcome = HostCommand.runBlocking(arguments)
        guard outcome.status == 0 else { throw CommandError(outcome.failure(of: arguments)) }
        return outcome.output
    }
}

/// `xenpv guest net-tap --netns NAME`: a guest whose vif is a TAP in a network namespace,
/// so that namespace's Linux stack (ping, TCP, any program run with `ip netns exec NAME`)
/// is the guest's and uses the PV NIC, until a shutdown request, SIGINT or SIGTERM.
struct GuestNetTap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net-tap",
        abstract: "Put the vif on a TAP in a network namespace, addressed as its script implies, until shutdown.",
        discussion: """
            The TAP (--tap-name, eth0) is made in /run/netns/NAME (the namespace is made if it is not there,
            and removed at exit), takes the vif's MAC, and is addressed from the vif's backend directory:
            vif-route: its ip as a /32 and a default route out of the TAP (the host's end answers by proxy ARP);
            vif-nat: its ip (else 10.D1.D2.(4×devid+2)) as a /30, default route via the /30's host end;
            vif-bridge: its ip (/24 unless it says) and no default route. --address and --gateway override.
            `xenpv guest disk … --netns NAME` does the same beside a disk job.
            """)

    @OptionGroup var options: GuestOptions
    @OptionGroup(title: "The guest's NIC") var nic: GuestTapOptions

    func validate() throws {
        guard nic.netns != nil else { throw ValidationError("net-tap needs --netns NAME") }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: options.verbose)
        guard let namespace = nic.netns else { return }
        let hv = try JoinedDomain.join(options.hypervisor, connect: options.connect, as: options.request(devices: [.vif]))
        defer { hv.close() }
        say("xenpv guest: joined as \(hv.domainID)")
        let shutdown = ShutdownWatch(hv, enabled: !options.noControl)
        defer { shutdown.cancel() }
        let tapNIC = try GuestTapNIC(hv, nic, namespace: namespace, connectTimeout: options.connectTimeout, logger: logger)
        defer { tapNIC.close() }
        shutdown.suspender?.add(tapNIC.endpoint)
        // A shutdown request ends the wait as a signal does (the handler is installed below,
        // long before dom0's request can arrive).
        shutdown.raiseSIGTERMOnRequest()
        let signal = ProcessSupport.waitForTerminationSignal()
        if let request = shutdown.request {
            say("xenpv guest: leaving for the \(request.rawValue) request")
        } else {
            say("xenpv guest: signal \(signal), leaving")
        }
    }
}
