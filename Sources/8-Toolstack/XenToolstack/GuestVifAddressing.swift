import XenABI

/// How a guest's own network stack is set up on one of its vifs, as the mode of the vif's
/// hotplug script implies: what a Linux guest of that host would be configured with.
///
/// It is read from the keys dom0 wrote in the vif's backend directory (`script`, `ip`),
/// which the guest may read:
/// - `vif-route`: the first `ip` as a /32, and a default route out of the vif with no
///   gateway address: the host's end of the vif (which holds the host's primary address)
///   answers every ARP request by proxy ARP, so it is the gateway whatever its address.
/// - `vif-nat`: the first `ip`, else `10.D/256.D%256.(4×devid+2)` as the backend makes it,
///   as a /30, with the other usable address of that /30 (the host's end) as the gateway.
/// - `vif-bridge`: the first `ip` with its prefix (`/24` when it gives none) and no default
///   route (the bridge's network decides); no address when there is no `ip`.
public struct GuestVifAddressing: Hashable, Sendable {
    /// The guest's default route.
    public enum DefaultRoute: Hashable, Sendable {
        /// None.
        case none
        /// Out of the vif with no gateway address (the host answers by proxy ARP).
        case onLink
        /// Through this gateway.
        case via(IPv4Address)
    }

    /// The vif's mode.
    public var script: VifScript
    /// The guest's address, or nil to leave the interface without one.
    public var address: IPv4Address?
    /// The address's prefix length.
    public var prefix: Int
    /// The guest's default route.
    public var defaultRoute: DefaultRoute

    /// Addressing from its parts.
    public init(script: VifScript, address: IPv4Address?, prefix: Int, defaultRoute: DefaultRoute) {
        self.script = script
        self.address = address
        self.prefix = prefix
        self.defaultRoute = defaultRoute
    }

    /// The addressing vif `devid` of `domain` implies, from its backend directory's `script`
    /// (a name or a path ending in one; absent means `vif-bridge`) and `ip` (blank-separated
    /// addresses, each optionally `/N`; only the first is the guest's).
    /// - Throws: ``DomainConfigError`` `.invalidValue` for a script or address that is none,
    ///   a `vif-route` vif without `ip`, or a `vif-nat` address that is its /30's network or
    ///   broadcast address.
    public init(backendKeys keys: [String: String], domain: DomainID, devid: UInt32) throws(DomainConfigError) {
        func invalid(_ message: String) -> DomainConfigError { DomainConfigError(.invalidValue, message, key: "vif") }
        var script = VifScript.bridge
        if let text = keys["script"] {
            let last = text.prefix(256).split(separator: "/").last.map(String.init) ?? ""
            guard let named = VifScript(rawValue: last) else {
                throw invalid("script \(quoted(text.prefix(64))) is not vif-bridge, vif-route or vif-nat")
            }
            script = named
        }
        var given: (address: IPv4Address, prefix: Int?)?
        if let text = keys["ip"], let word = text.prefix(1024).split(whereSeparator: { $0 == " " || $0 == "\t" }).first {
            guard let parsed = Self.parseAddress(word) else {
                throw invalid("ip \(quoted(word.prefix(64))) is not an IPv4 address like 192.0.2.10 or 192.0.2.10/24")
            }
            given = parsed
        }
        switch script {
        case .route:
            guard let given else { throw invalid("a vif-route vif needs an ip: the host routes only the addresses it names") }
            self.init(script: .route, address: given.address, prefix: 32, defaultRoute: .onLink)
        case .nat:
            let guest: UInt32
            if let given {
                guest = given.address.value
            } else {
                guard devid < 64 else { throw invalid("a vif-nat vif without ip needs a devid below 64 (10.D1.D2.(4×devid+2))") }
                let d = UInt32(domain.rawValue)
                guest = 10 << 24 | (d >> 8) << 16 | (d & 0xff) << 8 | (4 * devid + 2)
            }
            let base = guest & ~3
            let host: UInt32
            switch guest & 3 {
            case 1: host = base + 2
            case 2: host = base + 1
            default: throw invalid("vif-nat ip \(IPv4Address(value: guest)) is the network or broadcast address of its /30")
            }
            self.init(script: .nat, address: IPv4Address(value: guest), prefix: 30, defaultRoute: .via(IPv4Address(value: host)))
        case .bridge:
            self.init(script: .bridge, address: given?.address, prefix: given?.prefix ?? 24, defaultRoute: .none)
        }
    }

    /// `A.B.C.D` or `A.B.C.D/N` (N 0 … 32, no leading zero) as an address and its prefix
    /// length, if given; nil for anything else.
    public static func parseAddress(_ word: some StringProtocol) -> (address: IPv4Address, prefix: Int?)? {
        let halves = word.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count <= 2, let address = IPv4Address(halves[0]) else { return nil }
        guard halves.count == 2 else { return (address, nil) }
        let p = halves[1]
        guard !p.isEmpty, p.count <= 2, p.allSatisfy({ $0 >= "0" && $0 <= "9" }), p == "0" || !p.hasPrefix("0"),
            let prefix = Int(p), prefix <= 32
        else { return nil }
        return (address, prefix)
    }

    /// `A.B.C.D/N`, as `ip addr add` takes it; nil without an address.
    public var cidr: String? { address.map { "\($0)/\(prefix)" } }
}

extension IPv4Address {
    /// The address as a 32-bit number, most significant octet first.
    public var value: UInt32 { octets.reduce(0) { $0 << 8 | UInt32($1) } }

    /// The address of a 32-bit number, most significant octet first.
    public init(value: UInt32) {
        octets = [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: value >> UInt32($0)) }
    }
}
