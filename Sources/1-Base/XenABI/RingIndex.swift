import CXen

/// A free-running ring index (`RING_IDX`, 32 bits). Indices only grow and wrap
/// at 2^32; a slot is `index & (size - 1)`, and distances are computed with
/// wrapping subtraction, exactly as `ring.h` does.
@frozen
public struct RingIndex: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `RING_IDX` value (a 32-bit unsigned counter, not a slot number).
    public var rawValue: UInt32
    /// Wraps a `RING_IDX` value, such as one read from a shared ring's header.
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a `RING_IDX` value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    /// The index in decimal.
    public var description: String { "\(rawValue)" }

    /// The index `n` entries later, wrapping at 2^32.
    @inlinable public static func + (a: Self, n: UInt32) -> Self { Self(a.rawValue &+ n) }
    /// Entries from `b` up to `a` (`a - b` in `RING_IDX` arithmetic).
    @inlinable public static func - (a: Self, b: Self) -> UInt32 { a.rawValue &- b.rawValue }
    /// Advances the index by `n` entries, wrapping at 2^32.
    @inlinable public static func += (a: inout Self, n: UInt32) { a.rawValue &+= n }
}
