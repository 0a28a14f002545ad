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

    // MARK: one direction of the ring, for either side

    /// `RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY`: publishes `new` to `producer`
    /// (our `req_prod` or `rsp_prod`) and returns whether the peer asked to be notified
    /// of the entries pushed (its `event` lies in the pushed range).
    @inlinable
    static func push(_ new: UInt32, to producer: UnsafeAtomic<UInt32>, checking event: UnsafeAtomic<UInt32>) -> Bool {
        // Relaxed: the producer index is written only by us; this reads our last push.
        let old = producer.load(ordering: .relaxed)
        // Releasing: the slot writes before this call may not move below this
        // store, so the peer never sees the new index before the entries it covers.
        producer.store(new, ordering: .releasing)
        // Sequentially consistent fence: the store of the producer index above may
        // not be reordered after the load of the peer's event index below (the
        // store-load reordering x86 allows). Pairs with the fence in the peer's
        // final check, so either it sees our entries or we see its new event index.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // Relaxed: ordered by the fence above; only compared, never trusted.
        let event = event.load(ordering: .relaxed)
        return new &- event < new &- old
    }

    /// The middle of `RING_FINAL_CHECK_FOR_{REQUESTS,RESPONSES}`: asks the peer to
    /// notify on the next entry (`event = consumed + 1`, our `req_event` or
    /// `rsp_event`); the caller then checks its producer index once more.
    @inlinable
    static func askToBeNotified(at event: UnsafeAtomic<UInt32>, after consumed: UInt32) {
        // Relaxed: ordered against the caller's re-read by the fence.
        event.store(consumed &+ 1, ordering: .relaxed)
        // Sequentially consistent fence: the event store may not be reordered
        // after the caller's load of the peer's producer index (store-load).
        // Pairs with the fence in the peer's push: it sees our event index, or
        // we see its entries.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }
}
