import Glibc
import XenABI
import XenLocks

/// blkback's bounce pages: private memory asked to be backed by transparent huge pages,
/// so pages next to each other are next to each other in physical memory too. A request
/// whose segments sit on adjacent bounce pages then reaches the disk as one
/// scatter-gather element instead of one per page, which decides 128 KiB throughput on
/// a virtio disk without indirect descriptors (see ``BlockQueue``). Where huge pages are
/// off, the pages are ordinary ones and only that advantage is lost.
final class BouncePool: @unchecked Sendable {
    // @unchecked: memory owned by one queue at a time; ``BouncePools`` hands it over.
    let base: UnsafeMutableRawPointer
    /// Pages asked for (the mapping rounds up to whole huge pages).
    let pages: Int
    private let mapping: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private static let hugePage = 2 << 20

    init(pages: Int) {
        self.pages = pages
        let bytes = (pages * XenPage.size + Self.hugePage - 1) / Self.hugePage * Self.hugePage
        mappedBytes = bytes + Self.hugePage
        guard let raw = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            fatalError("blkback bounce pool: mmap of \(mappedBytes) bytes failed, errno \(errno)")
        }
        mapping = raw
        let aligned = (Int(bitPattern: raw) + Self.hugePage - 1) / Self.hugePage * Self.hugePage
        base = UnsafeMutableRawPointer(bitPattern: aligned)!
        _ = madvise(base, bytes, MADV_HUGEPAGE)  // advice only: ordinary pages where THP is off
    }

    /// Writes zeros over every page: the kernel backs them now (and, in a VM, the host)
    /// instead of at their first request, and nothing of an earlier connection stays.
    func clear() { base.initializeMemory(as: UInt8.self, repeating: 0, count: pages * XenPage.size) }

    deinit { munmap(mapping, mappedBytes) }
}

/// Bounce pools kept between a backend's connections, with their pages backed.
///
/// A queue's pool is a few MiB that its first requests would fault in: the kernel
/// allocates and zeroes a huge page at each first touch, and in a VM whose host reclaimed
/// the memory (as it does once another process freed a migrated guest's 256 MiB) that
/// took 9–36 ms, on the queue thread, for the first request of a guest that had just
/// migrated here (`perf`: `folio_zero_user` under blkback's copy into the pool). So a
/// device warms a pool while it waits for its frontend (in InitWait: a migrated guest's
/// destination device waits there during pre-copy, before the pause), a queue takes one
/// when it starts, and a queue that ends gives its pool back, cleared, for the next.
/// ``BlockBackend`` keeps one for all its devices.
public final class BouncePools: Sendable {
    /// Pools kept idle at most.
    public let keep: Int

    private struct State {
        var idle: [BouncePool] = []
        /// Sizes being warmed: several devices reaching InitWait together warm one pool.
        var warming: Set<Int> = []
    }

    private let state = Locked(State())

    /// Keeps at most `keep` idle pools (each 4 MiB with the default 1,024 pages).
    public init(keep: Int = 4) { self.keep = keep }

    /// Pools kept now, idle, with their pages backed.
    public var keptCount: Int { state.withLock { $0.idle.count } }

    /// A pool of `pages` pages, and whether it was kept (its pages backed); else a new one.
    func take(pages: Int) -> (BouncePool, kept: Bool) {
        let kept = state.withLock { s -> BouncePool? in
            guard let i = s.idle.firstIndex(where: { $0.pages == pages }) else { return nil }
            return s.idle.remove(at: i)
        }
        if let kept { return (kept, true) }
        return (BouncePool(pages: pages), false)
    }

    /// Keeps `pool` for a later ``take(pages:)``, cleared, while there is room; else frees it.
    func give(_ pool: BouncePool) {
        guard keptCount < keep else { return }
        pool.clear()
        state.withLock { if $0.idle.count < keep { $0.idle.append(pool) } }
    }

    /// Makes sure a pool of `pages` pages is kept, its pages backed, on a thread of its
    /// own (zeroing a few MiB the host has to back can take tens of ms).
    func warm(pages: Int) {
        let start = state.withLock { s -> Bool in
            guard !s.idle.contains(where: { $0.pages == pages }), !s.warming.contains(pages) else { return false }
            s.warming.insert(pages)
            return true
        }
        guard start else { return }
        startDetachedThread(named: "blkback-warm") { [self] in
            give(BouncePool(pages: pages))
            state.withLock { _ = $0.warming.remove(pages) }
        }
    }
}
