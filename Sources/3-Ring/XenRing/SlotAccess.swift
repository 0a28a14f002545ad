import Atomics

/// Reads and writes of ring slots, the only places that touch entry memory.
@usableFromInline
enum SlotAccess {
    /// Copies one entry out of shared memory (`RING_COPY_REQUEST`/`RING_COPY_RESPONSE`).
    @inlinable @inline(__always)
    static func copy<T: BitwiseCopyable>(_ slot: UnsafeMutableRawPointer, as _: T.Type) -> T {
        // SAFETY: `slot` is an entry of the mapped ring, aligned for T because
        // the entry size is a multiple of the entry alignment and slots start
        // at offset 64.
        let value = slot.load(as: T.self)
        // Acquiring fence (no instruction on x86, a compiler barrier): the load
        // above may not move below it, so no use of `value` can be turned into
        // a second read of the slot the peer may have rewritten meanwhile.
        // This is what the volatile copy in ring.h's RING_COPY_ guarantees.
        atomicMemoryFence(ordering: .acquiring)
        return value
    }

    /// Writes one entry into shared memory.
    @inlinable @inline(__always)
    static func store<T: BitwiseCopyable>(_ value: T, to slot: UnsafeMutableRawPointer) {
        // SAFETY: as in `copy`; the slot is ours to write until we publish it.
        slot.storeBytes(of: value, as: T.self)
    }

    /// The slot as a typed pointer for in-place writes.
    @inlinable @inline(__always)
    static func typed<T: BitwiseCopyable>(_ slot: UnsafeMutableRawPointer, as _: T.Type) -> UnsafeMutablePointer<T> {
        // SAFETY: binding raw memory of a trivial type is a no-op at run time;
        // the slot is ours to write until we publish it. The peer reads it
        // through its own mapping, outside what this compiler can see.
        slot.bindMemory(to: T.self, capacity: 1)
    }
}
