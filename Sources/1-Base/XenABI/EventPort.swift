import CXen

/// An event-channel port (`evtchn_port_t`): local to the domain that bound it.
@frozen
public struct EventPort: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The `evtchn_port_t` value.
    public var rawValue: UInt32
    /// Wraps an `evtchn_port_t` value; whether the port is bound is the hypervisor's to check.
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps an `evtchn_port_t` value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    /// `port:` followed by the number, for logs.
    public var description: String { "port:\(rawValue)" }
    /// Orders ports by number.
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// `EVTCHN_2L_NR_CHANNELS` on a 64-bit guest: the 2-level ABI's port limit.
    public static let twoLevelLimit = UInt32(MemoryLayout<xen_ulong_t>.size * 8 * MemoryLayout<xen_ulong_t>.size * 8)
}
