import Glibc
import XenSockets

/// What the hypervisor daemon lets its clients do and hold: who counts as
/// dom0, and a cap on everything a client can make the daemon keep.
public struct DaemonPolicy: Sendable {
    /// Who may join as dom0 and create guests (root and the daemon's own user by default).
    public var trusted = TrustedPeers()
    /// The socket file's mode: the owner alone (0600) or a group too (0660).
    public var socketAccess = SocketAccess.ownerOnly
    /// dom0 backend processes joined at once (`DomainRequest.backend`).
    public var maxBackends = 1
    /// Connections at once, from everyone and from one untrusted user.
    public var maxConnections = 512
    public var maxConnectionsPerUser = 16
    /// Event-channel ports a guest process may hold bound.
    public var maxPortsPerGuest = 64
    /// Grant mappings (map calls not yet unmapped) a guest process may hold.
    public var maxMappingsPerGuest = 256
    /// Domains created for a token that may wait for their guest at once, and for how long.
    public var maxPendingDomains = 64
    public var pendingLifetime: Double = 60

    public init() {}
}

/// The secret a guest presents to join the domain a dom0 process created for
/// it: 128 random bits, shown as 32 hex digits.
public struct DomainToken: Sendable, Hashable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses 32 hex digits; nil for anything else.
    public init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 32, let h = UInt64(String(text.prefix(16)), radix: 16),
            let l = UInt64(String(text.suffix(16)), radix: 16), bytes.allSatisfy({ $0 != UInt8(ascii: "+") && $0 != UInt8(ascii: "-") })
        else { return nil }
        self.init(high: h, low: l)
    }

    /// From the system generator (on Linux, getrandom: the kernel's CSPRNG).
    static func random() -> DomainToken {
        var rng = SystemRandomNumberGenerator()
        return DomainToken(high: rng.next(), low: rng.next())
    }

    public var description: String {
        let h = String(high, radix: 16)
        let l = String(low, radix: 16)
        return String(repeating: "0", count: 16 - h.count) + h + String(repeating: "0", count: 16 - l.count) + l
    }
}
