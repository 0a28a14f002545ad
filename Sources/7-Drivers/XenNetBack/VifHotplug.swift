import XenABI
import XenBus
import XenNetProtocol
import XenNetTap
import XenStore

/// An IPv4 address with a prefix length, as a vif's `ip` key holds them (`192.0.2.10` or
/// `192.0.2.0/24`); parsed strictly: four decimal octets without leading zeros, a prefix 0 … 32.
public struct VifIPv4: Hashable, Sendable, CustomStringConvertible {
    /// The address, most significant octet in the high byte.
    public var address: UInt32
    /// The prefix length (32 when the text gave none).
    public var prefix: Int

    /// An address from its parts; nil for a prefix outside 0 … 32.
    public init?(address: UInt32, prefix: Int = 32) {
        guard (0...32).contains(prefix) else { return nil }
        self.init(unchecked: address, prefix: prefix)
    }

    /// For prefixes the caller knows are in range.
    init(unchecked address: UInt32, prefix: Int) {
        self.address = address
        self.prefix = prefix
    }

    /// `A.B.C.D` or `A.B.C.D/N`; nil for anything else.
    public init?(_ text: some StringProtocol) {
        let halves = text.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count <= 2, halves[0].utf8.count <= 15 else { return nil }
        var prefix = 32
        if halves.count == 2 {
            let p = halves[1]
            guard !p.isEmpty, p.count <= 2, p.allSatisfy({ $0 >= "0" && $0 <= "9" }), p == "0" || !p.hasPrefix("0"),
                let value = Int(p), value <= 32
            else { return nil }
            prefix = value
        }
        let parts = halves[0].split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var address: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0 >= "0" && $0 <= "9" }),
                part == "0" || !part.hasPrefix("0"), let octet = UInt8(part)
            else { return nil }
            address = address << 8 | UInt32(octet)
        }
        self.address = address
        self.prefix = prefix
    }

    /// The address alone, dotted decimal.
    public var host: String {
        [24, 16, 8, 0].map { String((address >> UInt32($0)) & 0xff) }.joined(separator: ".")
    }

    /// `A.B.C.D/N`.
    public var description: String { "\(host)/\(prefix)" }
}

/// What a vif's backend directory asks of the host, read as Xen's hotplug scripts read it
/// (`vif-common.sh`: `script`, `bridge`, `ip`, `vifname`). The directory is dom0's, written
/// by the toolstack, and still every value is checked before a tool sees it.
public struct VifHotplugSettings: Hashable, Sendable {
    /// The three network modes of Xen's vif scripts.
    public enum Script: String, Hashable, Sendable, CaseIterable {
        /// `vif-bridge`: the vif joins a Linux bridge.
        case bridge = "vif-bridge"
        /// `vif-route`: a host route to each of the guest's addresses, proxy ARP, forwarding.
        case route = "vif-route"
        /// `vif-nat`: a private /30 per vif and masquerade for what leaves it.
        case nat = "vif-nat"
    }

    /// The mode.
    public var script: Script
    /// The backend interface's name (`vifname`, else `vif<domid>.<devid>`).
    public var interfaceName: String
    /// The bridge (`bridge`), for `vif-bridge`.
    public var bridge: String?
    /// The guest's addresses (`ip`, blank-separated).
    public var addresses: [VifIPv4]

    /// Settings from their parts.
    public init(script: Script, interfaceName: String, bridge: String? = nil, addresses: [VifIPv4] = []) {
        self.script = script
        self.interfaceName = interfaceName
        self.bridge = bridge
        self.addresses = addresses
    }

    /// Checks the keys of a backend directory; nil when it names no `script` (a vif the
    /// daemon plugged: the backend's own default applies).
    ///
    /// `script` is `vif-bridge`, `vif-route` or `vif-nat`, or an absolute path without `..`
    /// ending in one of them (libxl writes the scripts' path); `bridge` and `vifname` are
    /// interface names (1 … 15 of `A-Z a-z 0-9 _ . -`, not `.` or `..`); `ip` is one or more
    /// ``VifIPv4`` separated by blanks.
    /// - Throws: ``NetBackendError`` `.hotplug` naming the key and the value refused.
    public init?(keys: [String: String], identity: VifIdentity) throws(NetBackendError) {
        guard let scriptText = keys["script"] else { return nil }
        func refuse(_ key: String, _ value: String, _ why: String) -> NetBackendError {
            NetBackendError(.hotplug, "\(identity): \(key) \(String(value.prefix(64)).debugDescription) \(why)")
        }
        let components = scriptText.split(separator: "/", omittingEmptySubsequences: false)
        let pathOK = components.count == 1
            || (scriptText.hasPrefix("/") && !components.dropFirst().contains { $0.isEmpty || $0 == "." || $0 == ".." })
        guard scriptText.utf8.count <= 256, pathOK, let last = components.last, let script = Script(rawValue: String(last))
        else {
            throw refuse("script", scriptText, "is not vif-bridge, vif-route or vif-nat (or an absolute path to one)")
        }
        self.script = script
        if let name = keys["vifname"] {
            guard Self.isInterfaceName(name) else {
                throw refuse("vifname", name, "is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -)")
            }
            interfaceName = name
        } else {
            interfaceName = identity.interfaceName
        }
        if let name = keys["bridge"] {
            guard Self.isInterfaceName(name) else {
                throw refuse("bridge", name, "is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -)")
            }
            bridge = name
        }
        addresses = []
        if let text = keys["ip"] {
            let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard text.utf8.count <= 1024, !words.isEmpty, words.count <= 16 else {
                throw refuse("ip", text, "is not 1 to 16 IPv4 addresses separated by blanks")
            }
            for word in words {
                guard let address = VifIPv4(word) else {
                    throw refuse("ip", String(word), "is not an IPv4 address like 192.0.2.10 or 192.0.2.0/24")
                }
                addresses.append(address)
            }
        }
    }

    /// A Linux interface name as the hotplug takes it: 1 … 15 of `A-Z a-z 0-9 _ . -`,
    /// not `.` or `..` (what `ip` and the kernel accept, and nothing a shell or nft reads specially).
    public static func isInterfaceName(_ name: String) -> Bool {
        let ok = name.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a)
                || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
        return ok && !name.isEmpty && name.utf8.count <= 15 && name != "." && name != ".."
    }
}

/// A vif's network set-up on the host, the three modes of Xen's hotplug scripts
/// (`tools/hotplug/Linux/vif-bridge`, `vif-route`, `vif-nat`) done with the kernel's own
/// facilities: a TAP device, a bridge, addresses, routes, proxy ARP, forwarding and an
/// nftables masquerade rule. Whatever a mode sets up goes when the attachment closes:
/// the TAP's removal takes its addresses and routes, and the NAT table is deleted.
public enum VifHotplug {
    /// The backend directory's keys the hotplug reads, each at most 1 KiB.
    static let keys = ["script", "bridge", "ip", "vifname"]

    /// Reads and checks vif `identity`'s backend directory `directory` (see
    /// ``VifHotplugSettings/init(keys:identity:)``); nil when it names no `script`.
    /// - Throws: ``NetBackendError`` `.hotplug` for a refused value or a failed read.
    public static func settings(directory: String, store: any XenStoreOperations,
                                identity: VifIdentity) async throws(NetBackendError) -> VifHotplugSettings? {
        // All in flight at once (this runs in the vif's connect); the first failure in
        // `keys`' order is the one reported.
        let read = await store.readAllIfPresent(keys.map { directory + "/" + $0 })
        var found: [String: String] = [:]
        for (key, result) in zip(keys, read) {
            do {
                if let value = try result.get() { found[key] = value }
            } catch {
                throw NetBackendError(.hotplug, "\(identity): reading \(key)", underlying: error)
            }
        }
        return try VifHotplugSettings(keys: found, identity: identity)
    }

    /// A factory for ``NetBackend`` that sets each vif up as its backend directory says
    /// (under `/local/domain/<backend>/backend/vif`), and asks `fallback` for a vif
    /// whose directory names no `script`. `defaultBridge` serves a `vif-bridge` vif
    /// without a `bridge` key; `namespace` is the network namespace (under `/run/netns`)
    /// the host side is made in, nil for the process's own.
    public static func factory(store: any XenStoreOperations, backend: DomainID, defaultBridge: String?,
                               namespace: String? = nil, fallback: @escaping AttachmentFactory) -> AttachmentFactory {
        return { identity, features in
            let device = XenbusDevice(type: "vif", id: identity.id, frontend: identity.frontend, backend: backend)
            guard let settings = try await settings(directory: device.backendPath, store: store, identity: identity) else {
                return try await fallback(identity, features)
            }
            return try await attach(settings, identity: identity, offloads: features.tapOffloads,
                                    defaultBridge: defaultBridge, namespace: namespace, queues: features.queues)
        }
    }

    /// Makes the vif's TAP and the host's side of `settings`' mode:
    /// - `vif-bridge`: the TAP joins `bridge` (else `defaultBridge`) and goes up.
    /// - `vif-route`: the TAP goes up on no bridge, with the host's primary address (the
    ///   default route's interface's first address, as vif-route's `dom0_ip`) as a /32 on
    ///   it, proxy ARP on it, `net.ipv4.ip_forward` 1, and a route to each `ip` via it.
    /// - `vif-nat`: the guest's address is the first `ip`, else 10.D1.D2.(4×devid+2) for
    ///   domain D = 256×D1+D2 (devid below 64); the host takes the other usable address of
    ///   its /30 on the TAP, forwarding goes on, and an nftables table of the vif's own
    ///   masquerades what leaves the /30 by any other interface.
    /// The TAP has `queues` queues (a multi-queue TAP when more than 1), one per vif queue.
    /// On a failure everything made so far is undone.
    /// - Throws: ``NetBackendError`` `.hotplug` with the reason.
    public static func attach(_ settings: VifHotplugSettings, identity: VifIdentity, offloads: TapOffloads,
                              defaultBridge: String?, namespace: String?,
                              queues: Int = 1) async throws(NetBackendError) -> TapAttachment {
        let name = settings.interfaceName
        let tools = HostCommand(namespace: namespace)
        func tap(bridge: String?) throws(NetBackendError) -> TapAttachment {
            do {
                if let namespace {
                    return try NetworkNamespace.run(in: "/run/netns/" + namespace) {
                        try TapAttachment(name: name, bridge: bridge, offloads: offloads, queues: queues)
                    }
                }
                return try TapAttachment(name: name, bridge: bridge, offloads: offloads, queues: queues)
            } catch {
                throw NetBackendError(.hotplug, "\(identity): \(settings.script.rawValue): \(name)"
                    + (bridge.map { " on bridge \($0)" } ?? ""), underlying: error)
            }
        }
        switch settings.script {
        case .bridge:
            guard let bridge = settings.bridge ?? defaultBridge else {
                throw NetBackendError(.hotplug, "\(identity): vif-bridge needs a bridge (the vif's bridge key or the backend's default)")
            }
            return try tap(bridge: bridge)
        case .route:
            let attachment = try tap(bridge: nil)
            do {
                let host = await primaryAddress(tools)
                if let host { try await tools.run(["ip", "addr", "add", "\(host.host)/32", "dev", name]) }
                try await tools.run(["sysctl", "-q", "-w", "net/ipv4/conf/\(name)/proxy_arp=1"])
                try await tools.run(["sysctl", "-q", "-w", "net/ipv4/ip_forward=1"])
                for address in settings.addresses {
                    try await tools.run(["ip", "route", "add", network(address).description, "dev", name]
                        + (host.map { ["src", $0.host] } ?? []))
                }
            } catch {
                await attachment.close()
                throw error
            }
            return attachment
        case .nat:
            let guest: VifIPv4
            if let given = settings.addresses.first {
                guest = given
            } else {
                guard identity.id < 64 else {
                    throw NetBackendError(.hotplug, "\(identity): vif-nat without ip makes 10.D1.D2.(4×devid+2), which needs a devid below 64")
                }
                let d = UInt32(identity.frontend.rawValue)
                guest = VifIPv4(unchecked: 10 << 24 | (d >> 8) << 16 | (d & 0xff) << 8 | (4 * identity.id + 2), prefix: 30)
            }
            let base = guest.address & ~3
            let hostAddress: UInt32
            switch guest.address & 3 {
            case 1: hostAddress = base + 2
            case 2: hostAddress = base + 1
            default:
                throw NetBackendError(.hotplug, "\(identity): vif-nat ip \(guest.host) is the network or broadcast address of its /30")
            }
            let subnet = VifIPv4(unchecked: base, prefix: 30).description
            let table = natTable(name)
            let attachment = try tap(bridge: nil)
            attachment.onClose { _ = await tools.launch(["nft", "delete", "table", "ip", table]) }
            do {
                try await tools.run(["ip", "addr", "add", "\(VifIPv4(unchecked: hostAddress, prefix: 30).host)/30", "dev", name])
                try await tools.run(["sysctl", "-q", "-w", "net/ipv4/ip_forward=1"])
                _ = await tools.launch(["nft", "delete", "table", "ip", table])  // a stale one from a crash
                try await tools.run(["nft", "add", "table", "ip", table])
                try await tools.run(["nft", "add", "chain", "ip", table, "postrouting",
                                     "{", "type", "nat", "hook", "postrouting", "priority", "srcnat", ";", "}"])
                try await tools.run(["nft", "add", "rule", "ip", table, "postrouting",
                                     "ip", "saddr", subnet, "oifname", "!=", "\"\(name)\"", "masquerade"])
            } catch {
                await attachment.close()
                throw error
            }
            return attachment
        }
    }

    /// The nftables table holding vif `name`'s NAT rule: `xenpv_` and the name with `_`,
    /// `.` and `-` spelled `__`, `_d`, `_h` (one name, one table; nft identifiers take no `-`).
    public static func natTable(_ name: String) -> String {
        var out = "xenpv_"
        for c in name {
            switch c {
            case "_": out += "__"
            case ".": out += "_d"
            case "-": out += "_h"
            default: out.append(c)
            }
        }
        return out
    }

    /// `address` with its host bits cleared (what `ip route` takes).
    static func network(_ address: VifIPv4) -> VifIPv4 {
        let mask: UInt32 = address.prefix == 0 ? 0 : ~UInt32(0) << UInt32(32 - address.prefix)
        return VifIPv4(unchecked: address.address & mask, prefix: address.prefix)
    }

    /// The host's primary address, as vif-common.sh's `dom0_ip`: the first global IPv4
    /// address of the interface the default route leaves by; nil when there is none.
    static func primaryAddress(_ tools: HostCommand) async -> VifIPv4? {
        guard let routes = try? await tools.run(["ip", "-4", "-o", "route", "show", "default"]) else { return nil }
        let words = routes.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let at = words.firstIndex(of: "dev"), at + 1 < words.count else { return nil }
        let dev = String(words[at + 1])
        guard VifHotplugSettings.isInterfaceName(dev),
            let addrs = try? await tools.run(["ip", "-4", "-o", "addr", "show", "dev", dev, "scope", "global"])
        else { return nil }
        let fields = addrs.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let inet = fields.firstIndex(of: "inet"), inet + 1 < fields.count else { return nil }
        return VifIPv4(fields[inet + 1])
    }
}
