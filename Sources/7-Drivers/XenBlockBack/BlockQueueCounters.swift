import XenDriverRuntime

/// What one blkback queue did, readable from any thread. The queue thread is the only
/// writer; every access is relaxed: counters are statistics, never synchronisation.
public final class BlockQueueCounters: Sendable {
    /// Requests taken off the ring.
    public let requests = DriverCounter(0)
    /// Data segments of read and write requests (indirect ones included).
    public let segments = DriverCounter(0)
    /// Buffers (iovecs) those segments went to the engine in: segments whose data lie
    /// next to each other share one.
    public let buffers = DriverCounter(0)
    /// Segments whose data went through bounce pages (copied) rather than straight to
    /// and from the frontend's mapped page.
    public let bouncedSegments = DriverCounter(0)
    /// Bytes those segments carried.
    public let bytes = DriverCounter(0)
    /// Responses written (every request gets exactly one).
    public let responses = DriverCounter(0)
    /// Requests refused by validation (bad segment count, range, unknown op, read-only…).
    public let refused = DriverCounter(0)
    /// Grant copies that failed (a bad or revoked grant reference).
    public let badGrants = DriverCounter(0)
    /// Storage operations that failed.
    public let storageErrors = DriverCounter(0)
    /// Persistent grants mapped.
    public let grantMaps = DriverCounter(0)
    /// Persistent grants unmapped to make room for others.
    public let grantEvictions = DriverCounter(0)
    /// Notifications sent to the frontend.
    public let notifies = DriverCounter(0)
    /// Times the queue thread slept on its descriptors.
    public let sleeps = DriverCounter(0)
    /// 1 when the queue started on a kept bounce pool, its pages already backed (``BouncePools``).
    public let warmBouncePool = DriverCounter(0)

    /// Counters all at zero.
    public init() {}
}
