import Glibc

/// The secret a guest presents to join the domain a dom0 process created for
/// it: 128 random bits, shown as 32 hex digits.
public struct DomainToken: Sendable, Hashable, CustomStringConvertible {
    /// The token's first 64 bits (the first 16 hex digits).
    public let high: UInt64
    /// The token's last 64 bits (the last 16 hex digits).
    public let low: UInt64

    /// A token from its two halves, as the daemon's reply carries it.
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
    package static func random() -> DomainToken {
        var rng = SystemRandomNumberGenerator()
        return DomainToken(high: rng.next(), low: rng.next())
    }

    /// The 32 lower-case hex digits, zero-padded: the form ``init(_:)`` parses and a guest is given.
    public var description: String {
        let h = String(high, radix: 16)
        let l = String(low, radix: 16)
        return String(repeating: "0", count: 16 - h.count) + h + String(repeating: "0", count: 16 - l.count) + l
    }
}
