import XenABI
import XenBlockProtocol

/// What one blkback queue was told at connect time.
public struct BlockQueueConfiguration: Sendable {
    /// The frontend's domain, owner of every grant on the ring.
    public var frontend: DomainID
    /// The local port bound to the frontend's event channel for this queue.
    public var port: EventPort
    /// The slot layout the frontend announced (`protocol`).
    public var abi: BlkifABI
    /// What every request is validated against.
    public var limits: BlockDeviceLimits
    /// Bounce pages for data in flight. A request that needs more than are free waits
    /// (stays on the ring) until completions return some: back-pressure, never a drop.
    public var bouncePages: Int
    /// The frontend's grants to keep mapped when `feature-persistent` was negotiated
    /// (see `PersistentGrants`; raised to the largest request); 0 grant-copies every
    /// segment through bounce pages.
    public var persistentGrants: Int
    /// Whether a request of several pages is copied through bounce pages even with
    /// persistent grants, so the engine gets one physically contiguous buffer for it
    /// (the bounce pages lie on huge pages where the system has them). nil: when the
    /// engine `StorageEngine.prefersContiguousBuffers`.
    public var contiguousCopies: Bool?
    /// Where the queue takes its bounce pool and gives it back when it ends (nil: a pool
    /// of its own, faulted in as used and freed at the end).
    public var bouncePools: BouncePools?

    /// Describes one queue's set-up.
    /// - Precondition: `bouncePages` holds the largest request (11 segments, or
    ///   `limits.maxIndirectSegments` if more), and `limits` does not accept data on a flush
    ///   or barrier (the queue does not sequence "write, then flush").
    public init(frontend: DomainID, port: EventPort, abi: BlkifABI = .native, limits: BlockDeviceLimits,
                bouncePages: Int = 1024, persistentGrants: Int = 0, contiguousCopies: Bool? = nil,
                bouncePools: BouncePools? = nil) {
        precondition(bouncePages >= max(BlockDeviceLimits.maxDirectSegments, limits.maxIndirectSegments),
                     "the bounce pool must hold the largest request")
        // A flush carrying data would need "write, then flush" sequencing the queue does not do.
        precondition(!limits.acceptsDataOnFlush, "blkback queues do not serve data on flush or barrier")
        self.frontend = frontend
        self.port = port
        self.abi = abi
        self.limits = limits
        self.bouncePages = bouncePages
        self.persistentGrants = persistentGrants
        self.contiguousCopies = contiguousCopies
        self.bouncePools = bouncePools
    }
}

/// A ring slot of the i386 layout as raw bytes (108 bytes, 4-aligned): the ring's
/// entry stride is `sizeof(union cblkif_x86_32_ring_entry)`, and requests are decoded
/// from a copy of it by ``BlockRequest/init(copyingSlotAt:abi:limits:)``.
struct X86_32RequestSlot: BitwiseCopyable {
    var words: InlineArray<27, UInt32>
}

/// An i386 response slot (12 bytes, `struct cblkif_x86_32_response`).
struct X86_32ResponseSlot: BitwiseCopyable {
    var words: InlineArray<3, UInt32>
}
