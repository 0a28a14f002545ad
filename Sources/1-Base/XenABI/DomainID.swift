import CXen

/// A Xen domain id (`domid_t`, 16 bits).
///
/// dom0 is the privileged control domain; ids at and above `DOMID_FIRST_RESERVED`
/// name special pseudo-domains and are never given to a guest.
@frozen
public struct DomainID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The `domid_t` value as Xen passes it.
    public var rawValue: UInt16
    /// Wraps a `domid_t` value; any 16-bit value is accepted, reserved ids included.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// Wraps a `domid_t` value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    /// Domain 0, the privileged control domain.
    public static let dom0 = DomainID(0)
    /// `DOMID_SELF`: "the calling domain" in hypercalls.
    public static let current = DomainID(cxen_domid_self)
    /// `DOMID_FIRST_RESERVED`: the first id that is not a real domain.
    public static let firstReserved = DomainID(cxen_domid_first_reserved)

    /// True for an id a real guest can have (below `DOMID_FIRST_RESERVED`).
    @inlinable public var isGuestDomain: Bool { rawValue < cxen_domid_first_reserved }
    /// `dom` followed by the id, as `xl list` names domains (`dom0`, `dom3`).
    public var description: String { "dom\(rawValue)" }
    /// Orders domains by id (dom0 first), for sorted listings.
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}
