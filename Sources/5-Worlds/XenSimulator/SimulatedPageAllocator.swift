import XenLocks
import Glibc
import XenABI
import XenHypervisor

/// A domain's own page allocator: first fit over its frames, zeroing what it
/// hands out. Set-up paths only.
final class SimulatedPageAllocator: PageAllocator, @unchecked Sendable {
    // @unchecked: `used` is guarded by `lock`; the memory and table are immutable references.
    private let lock = Lock()
    private var used: PageRuns
    private let memory: SharedMemory
    private let grants: GrantTable
    private let owner: DomainID

    init(owner: DomainID, memory: SharedMemory, grants: GrantTable) {
        self.owner = owner
        self.memory = memory
        self.grants = grants
        used = PageRuns(count: memory.pageCount)
    }

    func allocatePages(_ count: Int) throws(HypervisorError) -> GuestPages {
        guard count > 0 else { throw .errno(.invalidArgument, "allocating \(count) pages") }
        let first: Int = try lock.withLock { () throws(HypervisorError) -> Int in
            guard let start = used.take(count) else { throw .errno(.noMemory, "\(owner) has no run of \(count) free pages") }
            return start
        }
        let pages = MappedPages(base: memory.page(first), count: count)
        memset(pages.base, 0, pages.byteCount)
        return GuestPages(first: FrameNumber(UInt64(first)), memory: pages)
    }

    func freePages(_ pages: GuestPages) throws(HypervisorError) {
        let first = Int(pages.first.rawValue)
        let range = first..<(first + pages.memory.count)
        guard pages.memory.count > 0, range.upperBound <= memory.pageCount,
            pages.memory.base == memory.page(first)
        else { throw .errno(.invalidArgument, "\(pages.first)+\(pages.memory.count) are not pages of \(owner)") }
        let stillGranted = grants.grantedEntries().filter { range.contains(Int($0.frame.rawValue)) }
        guard stillGranted.isEmpty else {
            throw .errno(.resourceBusy, "frames of \(owner) still granted: \(stillGranted.map(\.ref.rawValue))")
        }
        try lock.withLock { () throws(HypervisorError) in
            guard used.allTaken(range) else {
                throw .errno(.invalidArgument, "\(pages.first)+\(pages.memory.count) of \(owner) are not all allocated")
            }
            used.release(range)
        }
    }

    /// Frames currently allocated (for reports and tests).
    var allocatedCount: Int { lock.withLock { used.takenCount } }
}
