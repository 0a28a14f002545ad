import XenABI
import XenHypervisor
import XenLocks

/// A grant mapper that lets a test look at the world at the moment of each unmap (is the
/// thread that used the mapping gone?), then forwards every call.
public final class WatchingMapper: GrantMapper, @unchecked Sendable {
    // @unchecked: `inner` is Sendable; `watcher` is behind its lock.
    public let inner: any GrantMapper
    private let watcher = Locked<(@Sendable (GrantMapping) -> Void)?>(nil)

    public init(_ inner: any GrantMapper) { self.inner = inner }

    /// Called before each unmap, on the unmapping thread.
    public func onUnmap(_ body: (@Sendable (GrantMapping) -> Void)?) { watcher.withLock { $0 = body } }

    public func map(_ ref: GrantRef, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try inner.map(ref, from: domain, writable: writable)
    }
    public func map(_ refs: UnsafeBufferPointer<GrantRef>, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try inner.map(refs, from: domain, writable: writable)
    }
    public func unmap(_ mapping: GrantMapping) throws(HypervisorError) {
        watcher.withLock { $0 }?(mapping)
        try inner.unmap(mapping)
    }
    public func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError) { try inner.copy(segments) }
    public func close() { inner.close() }
}
