import Atomics
import XenABI

/// The 64-byte header at the start of a shared ring page (`struct NAME_sring`
/// up to `ring[]`). Every access to an index is atomic: the peer writes the
/// same page concurrently.
@frozen
public struct SharedRingHeader: @unchecked Sendable {
    // @unchecked: a raw address; the ring that owns this header decides which
    // thread touches which field.
    /// The address of the ring's first page, where `req_prod` lies.
    public let base: UnsafeMutableRawPointer

    /// Views the header at `base`, which must be the start of mapped ring pages that outlive this value.
    @inlinable public init(_ base: UnsafeMutableRawPointer) { self.base = base }

    @inlinable func field(_ offset: Int) -> UnsafeAtomic<UInt32> {
        // SAFETY: the header lies in the ring's mapped pages; the four index
        // fields are 4-byte aligned u32s (offsets 0, 4, 8, 12 of a page).
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    /// `req_prod`: written by the frontend only.
    @inlinable public var requestProducer: UnsafeAtomic<UInt32> { field(RingGeometry.requestProducerOffset) }
    /// `req_event`: written by the backend only.
    @inlinable public var requestEvent: UnsafeAtomic<UInt32> { field(RingGeometry.requestEventOffset) }
    /// `rsp_prod`: written by the backend only.
    @inlinable public var responseProducer: UnsafeAtomic<UInt32> { field(RingGeometry.responseProducerOffset) }
    /// `rsp_event`: written by the frontend only.
    @inlinable public var responseEvent: UnsafeAtomic<UInt32> { field(RingGeometry.responseEventOffset) }

    /// `SHARED_RING_INIT` with every index started at `start` (0 in Xen):
    /// producers = start, events = start + 1, `pvt` and `__pad` zeroed.
    @usableFromInline func initialize(start: UInt32) {
        // Relaxed: the page is not yet advertised to the peer (the grant
        // reference is published later through xenstore, which orders it).
        requestProducer.store(start, ordering: .relaxed)
        responseProducer.store(start, ordering: .relaxed)
        requestEvent.store(start &+ 1, ordering: .relaxed)
        responseEvent.store(start &+ 1, ordering: .relaxed)
        let pad = RingGeometry.paddingRange
        (base + pad.lowerBound).initializeMemory(as: UInt8.self, repeating: 0, count: pad.count)
    }
}
