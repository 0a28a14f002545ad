import XenNetProtocol

/// The hotplug script a vif names; it decides how the backend's interface joins the host.
public enum VifScript: String, Hashable, Sendable, CaseIterable {
    /// `vif-bridge` (the default): the interface joins `bridge`.
    case bridge = "vif-bridge"
    /// `vif-route`: the host routes the vif's `ip` addresses to it.
    case route = "vif-route"
    /// `vif-nat`: the host translates the vif's addresses.
    case nat = "vif-nat"
}

/// An IPv4 address as dotted decimal.
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible {
    /// The four octets, most significant first.
    public var octets: [UInt8]

    /// Four decimal octets 0 … 255 separated by dots, without leading zeros
    /// (which some tools read as octal); nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0 >= "0" && $0 <= "9" }),
                part == "0" || !part.hasPrefix("0"), let value = UInt8(part)
            else { return nil }
            octets.append(value)
        }
        self.octets = octets
    }

    /// Dotted decimal.
    public var description: String { octets.map(String.init).joined(separator: ".") }
}

/// A vif's credit-based rate limit, as netback applies it: `bytesPerInterval`
/// may be sent, then the credit refills every `intervalMicroseconds`.
public struct VifRate: Hashable, Sendable {
    /// The credit per interval in bytes.
    public var bytesPerInterval: UInt64
    /// The refill period in microseconds.
    public var intervalMicroseconds: UInt32

    /// A rate from its parts.
    public init(bytesPerInterval: UInt64, intervalMicroseconds: UInt32) {
        self.bytesPerInterval = bytesPerInterval
        self.intervalMicroseconds = intervalMicroseconds
    }

    /// The interval when a rate names none (xl-network-configuration(5)): 50 ms.
    public static let defaultIntervalMicroseconds: UInt32 = 50_000

    /// Parses xl's `RATE/s` or `RATE/s@INTERVAL` as libxlu does (`xlu_vif_parse_rate`).
    ///
    /// RATE is a decimal count 1 … 2^32-1, an optional `K`, `M` or `G` (powers of
    /// 1000), then `B` for bytes or `b` for bits, then `/s`; bits become bytes per
    /// second rounded down. INTERVAL is a decimal count 1 … 2^32-1 with `us` or `u`
    /// (microseconds), `ms` or `m` (milliseconds), or `s` or nothing (seconds: this
    /// is what xl's code does, though xl-network-configuration(5) says a bare number
    /// is microseconds), at most 2^32-1 µs; 50 ms when absent. The credit is bytes
    /// per second × interval ÷ 1 s, rounded down: `10Mb/s` is 62500 bytes per 50 ms;
    /// `5MB/s@20ms` is 100000 per 20 ms.
    ///
    /// Stricter than xl: a leading zero (which xl's `strtoull(…, 0)` reads as octal)
    /// and a credit of zero bytes per interval are refused.
    public init(parsing text: String) throws(DomainConfigError) {
        func refuse(_ why: String) -> DomainConfigError {
            DomainConfigError(
                .invalidValue, "rate \(quoted(text)) \(why); write RATE/s[@INTERVAL], e.g. 10Mb/s or 5MB/s@20ms")
        }
        /// Leading decimal digits as a count 1 … 2^32-1, and what follows.
        func count(_ text: Substring, _ what: String) throws(DomainConfigError) -> (UInt64, Substring) {
            let digits = text.prefix { $0 >= "0" && $0 <= "9" }
            guard !digits.isEmpty, digits.count <= 10, let value = UInt64(digits), value > 0, value <= UInt64(UInt32.max)
            else {
                throw refuse("does not start its \(what) with a decimal count from 1 to \(UInt32.max)")
            }
            guard digits.first != "0" else { throw refuse("has a leading zero in its \(what)") }
            return (value, text.dropFirst(digits.count))
        }
        let halves = text.split(separator: "@", omittingEmptySubsequences: false)
        guard halves.count <= 2 else { throw refuse("has more than one @") }
        let (amount, unit) = try count(halves[0], "rate")
        let multiplier: UInt64
        let bits: Bool
        switch unit {
        case "B/s": (multiplier, bits) = (1, false)
        case "KB/s": (multiplier, bits) = (1_000, false)
        case "MB/s": (multiplier, bits) = (1_000_000, false)
        case "GB/s": (multiplier, bits) = (1_000_000_000, false)
        case "b/s": (multiplier, bits) = (1, true)
        case "Kb/s": (multiplier, bits) = (1_000, true)
        case "Mb/s": (multiplier, bits) = (1_000_000, true)
        case "Gb/s": (multiplier, bits) = (1_000_000_000, true)
        default: throw refuse("has unit \(quoted(unit)), which is not one of B/s, KB/s, MB/s, GB/s, b/s, Kb/s, Mb/s, Gb/s")
        }
        // At most (2^32-1) × 10^9 < 2^62: no overflow.
        let bytesPerSecond = amount * multiplier / (bits ? 8 : 1)
        var interval = UInt64(Self.defaultIntervalMicroseconds)
        if halves.count == 2 {
            let (value, suffix) = try count(halves[1], "interval after @")
            switch suffix {
            case "u", "us": interval = value
            case "m", "ms": interval = value * 1_000
            case "", "s": interval = value * 1_000_000
            default: throw refuse("has interval unit \(quoted(suffix)), which is not one of us, ms, s")
            }
            guard interval <= UInt64(UInt32.max) else { throw refuse("has an interval longer than 2^32-1 µs") }
        }
        let (product, overflow) = bytesPerSecond.multipliedReportingOverflow(by: interval)
        guard !overflow else { throw refuse("is too large for its interval") }
        let bytes = product / 1_000_000
        guard bytes > 0 else { throw refuse("gives less than one byte per interval; raise the rate or lengthen the interval") }
        self.bytesPerInterval = bytes
        self.intervalMicroseconds = UInt32(interval)
    }
}

/// One `vif = [ … ]` entry, per xl-network-configuration(5): comma-separated
/// `key=value` pairs, blanks around each ignored; `''` takes every default.
///
/// Read: `mac` (six hex pairs, unicast; absent: the caller assigns one), `bridge`,
/// `ip` (IPv4 addresses separated by blanks), `script` (`vif-bridge`, the default,
/// `vif-route`, `vif-nat`, or a path ending in one of them), `rate`
/// (see ``VifRate/init(parsing:)``), `vifname`, `type` (only `vif`), and `model`
/// (accepted and ignored: it picks an emulated NIC, and there is none here).
/// Refused: any other key, a key given twice, a parameter without `=`.
public struct VifSpec: Hashable, Sendable {
    /// The guest's MAC address, or nil for the caller to assign.
    public var mac: MACAddress?
    /// The bridge the backend interface joins, or nil for the caller's default.
    public var bridge: String?
    /// The guest's addresses (for `vif-route` and `vif-nat`).
    public var ip: [IPv4Address]
    /// The hotplug script.
    public var script: VifScript
    /// The rate limit, or nil for none.
    public var rate: VifRate?
    /// The backend interface's name, or nil for the default `vif<domid>.<devid>`.
    public var vifname: String?

    /// A vif spec from its parts.
    public init(
        mac: MACAddress? = nil, bridge: String? = nil, ip: [IPv4Address] = [], script: VifScript = .bridge,
        rate: VifRate? = nil, vifname: String? = nil
    ) {
        self.mac = mac
        self.bridge = bridge
        self.ip = ip
        self.script = script
        self.rate = rate
        self.vifname = vifname
    }

    /// Parses one VIFSPEC string. The error has no location; ``DomainConfig`` adds it.
    public init(parsing spec: String) throws(DomainConfigError) {
        self.init()
        var given: Set<Substring> = []
        for raw in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let parameter = raw.trimmingBlanks()
            if parameter.isEmpty { continue }
            guard let equals = parameter.firstIndex(of: "=") else {
                throw DomainConfigError(.invalidValue, "\(quoted(parameter)) is not key=value")
            }
            let key = parameter[..<equals]
            let value = parameter[parameter.index(after: equals)...]
            guard given.insert(key).inserted else {
                throw DomainConfigError(.duplicate, "\(key) is given twice; give each key once")
            }
            func invalid(_ message: String) -> DomainConfigError { DomainConfigError(.invalidValue, message) }
            switch key {
            case "mac":
                // MACAddress alone would take a sign (`+f`); the digits are checked first.
                guard value.count == 17,
                    value.enumerated().allSatisfy({ $0.offset % 3 == 2 ? $0.element == ":" : $0.element.isHexDigit }),
                    let mac = MACAddress(value)
                else {
                    throw invalid("mac \(quoted(value)) is not six hex pairs separated by colons, e.g. 00:16:3e:12:34:56")
                }
                guard mac.bytes.0 & 1 == 0 else {
                    throw invalid("mac \(quoted(value)) is a multicast address; a NIC's address has the low bit of its first octet clear (e.g. 00:16:3e:…)")
                }
                self.mac = mac
            case "bridge":
                bridge = try Self.interfaceName(value, key: "bridge")
            case "vifname":
                vifname = try Self.interfaceName(value, key: "vifname")
            case "ip":
                let words = value.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard !words.isEmpty else { throw invalid("ip is empty; give one or more IPv4 addresses separated by spaces") }
                var addresses: [IPv4Address] = []
                for word in words {
                    guard let address = IPv4Address(word) else {
                        throw invalid("ip \(quoted(word)) is not an IPv4 address like 192.0.2.10")
                    }
                    addresses.append(address)
                }
                ip = addresses
            case "script":
                let last = value.split(separator: "/").last.map(String.init) ?? ""
                guard let script = VifScript(rawValue: last) else {
                    throw invalid("script \(quoted(value)) is not vif-bridge, vif-route or vif-nat (or a path ending in one)")
                }
                self.script = script
            case "rate":
                rate = try VifRate(parsing: String(value))
            case "type":
                guard value == "vif" else {
                    throw DomainConfigError(.unsupported, "type \(quoted(value)) is not supported; only vif (a PV NIC) is")
                }
            case "model":
                break
            default:
                throw DomainConfigError(
                    .unknownKey,
                    "\(quoted(key)) is not a vif key here; use mac, bridge, ip, script, rate, vifname, type or model")
            }
        }
    }

    /// A Linux interface name: 1 … 15 bytes, no `/`, `:`, blank or control byte, not `.` or `..`.
    static func interfaceName(_ value: Substring, key: String) throws(DomainConfigError) -> String {
        let ok = !value.isEmpty && value.utf8.count <= 15 && value != "." && value != ".."
            && value.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }
        guard ok else {
            throw DomainConfigError(
                .invalidValue,
                "\(key) \(quoted(value)) is not an interface name (1 to 15 printable characters without /, : or blanks)")
        }
        return String(value)
    }
}
