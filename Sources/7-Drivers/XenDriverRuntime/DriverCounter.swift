import Atomics

/// A statistic a driver thread writes and anyone reads (`xenpv top`, tests): an atomic,
/// so readers on other threads are race-free (and ThreadSanitizer agrees). Every access
/// is relaxed: counters are never used to order anything.
public typealias DriverCounter = ManagedAtomic<UInt64>

extension ManagedAtomic where Value == UInt64 {
    @inlinable @inline(__always)
    /// Adds `n` (relaxed, wrapping at 2^64).
    public func bump(_ n: UInt64 = 1) { wrappingIncrement(by: n, ordering: .relaxed) }
    /// The current count (relaxed).
    @inlinable public var value: UInt64 { load(ordering: .relaxed) }
}
