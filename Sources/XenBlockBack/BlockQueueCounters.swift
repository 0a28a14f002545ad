import Atomics

/// What one blkback queue did, readable from any thread. The queue thread is the only
/// writer; every access is relaxed: counters are statistics, never synchronisation.
public final class BlockQueueCounters: Sendable {
    /// Requests taken off the ring.
    public let requests = ManagedAtomic<UInt64>(0)
    /// Data segments of read and write requests (indirect ones included).
    public let segments = ManagedAtomic<UInt64>(0)
    /// Buffers (iovecs) those segments went to the engine in: segments whose data lie
    /// next to each other share one.
    public let buffers = ManagedAtomic<UInt64>(0)
    /// Segments whose data went through bounce pages (copied) rather than straight to
    /// and from the frontend's mapped page.
    public let bouncedSegments = ManagedAtomic<UInt64>(0)
    /// Bytes those segments carried.
    public let bytes = ManagedAtomic<UInt64>(0)
    /// Responses written (every request gets exactly one).
    public let responses = ManagedAtomic<UInt64>(0)
    /// Requests refused by validation (bad segment count, range, unknown op, read-only…).
    public let refused = ManagedAtomic<UInt64>(0)
    /// Grant copies that failed (a bad or revoked grant reference).
    public let badGrants = ManagedAtomic<UInt64>(0)
    /// Storage operations that failed.
    public let storageErrors = ManagedAtomic<UInt64>(0)
    /// Persistent grants mapped, and unmapped to make room for others.
    public let grantMaps = ManagedAtomic<UInt64>(0)
    public let grantEvictions = ManagedAtomic<UInt64>(0)
    /// Notifications sent to the frontend.
    public let notifies = ManagedAtomic<UInt64>(0)
    /// Times the queue thread slept on its descriptors.
    public let sleeps = ManagedAtomic<UInt64>(0)

    public init() {}
}

extension ManagedAtomic<UInt64> {
    @inline(__always) func bump(_ n: UInt64 = 1) { wrappingIncrement(by: n, ordering: .relaxed) }
    /// The current count (relaxed).
    public var value: UInt64 { load(ordering: .relaxed) }
}
