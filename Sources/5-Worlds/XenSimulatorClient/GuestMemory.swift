import Atomics
import CXen
import Foundation
import Glibc
import XenLocks
import SystemPackage
import XenABI
import XenHypervisor

/// What a guest kernel has of its own: its frames (the domain's memfd, mapped
/// whole), the slice of them this process allocates from, and its grant table
/// (a memfd of `grant_entry_v1`), which it writes itself, as a guest does.
/// Granting a page therefore costs no daemon round trip; the daemon reads the
/// entry when a peer asks to map it.
///
/// Several dom0 processes share dom0's memory and table, so each gets a
/// disjoint slice of frames and of grant references from the daemon.
final class GuestMemory: PageAllocator, @unchecked Sendable {
    // @unchecked: `used`, `freeRefs` and `granted` are guarded by `lock`; the
    // table is accessed through atomics as grant_table.h prescribes.
    let owner: DomainID
    let base: UnsafeMutableRawPointer
    let totalFrames: Int
    let frames: Range<Int>
    let table: UnsafeMutableRawPointer
    let tableEntries: Int
    let refs: Range<UInt32>
    private let lock = Lock()
    private var used: PageRuns
    private var freeRefs: [UInt32]
    private var granted: Set<UInt32> = []
    /// Old hosts' memory moved aside by `move`, to unmap (address, bytes).
    private var movedAside: [(UInt, Int)] = []
    /// Descriptors to close with that teardown: the old host's link, whose close lets
    /// that host release the domain (its store, its backends letting go).
    private var closeAside: [Int32] = []
    /// Signalled by `settle()`: the unmapping of what `dropMovedAside` took may start.
    private var unsettled: DispatchSemaphore?
    /// This process's userfaultfd that the daemon tracks its writes through (a copy;
    /// it asked for remap events, see `movingTrackedRanges`), or -1.
    private var tracking: Int32 = -1
    /// Old hosts' userfaultfds, closed after the unmapping: closed first, the last
    /// reference's release would unprotect the moved-aside mappings entry by entry.
    private var closeAfterUnmap: [Int32] = []

    init(owner: DomainID, memoryFD: Int32, totalFrames: Int, frames: Range<Int>, tableFD: Int32, tableEntries: Int,
         refs: Range<UInt32>) throws(HypervisorError) {
        self.owner = owner
        self.totalFrames = totalFrames
        self.frames = frames
        self.tableEntries = tableEntries
        self.refs = refs
        base = try Mapping.map(memoryFD, bytes: totalFrames * XenPage.size)
        do {
            table = try Mapping.map(tableFD, bytes: tableEntries * MemoryLayout<grant_entry_v1>.stride)
        } catch {
            munmap(base, totalFrames * XenPage.size)
            throw error
        }
        used = PageRuns(count: frames.count)
        freeRefs = Array(refs.reversed())
    }

    deinit {
        munmap(base, totalFrames * XenPage.size)
        munmap(table, tableEntries * MemoryLayout<grant_entry_v1>.stride)
        if tracking >= 0 { close(tracking) }
    }

    // MARK: Moving to another host

    /// Closes what `closeLater` was given, unmaps the old host's memory that `move` set
    /// aside, then closes the old userfaultfds `keepTracking` replaced, on a thread of its
    /// own, once ``settle()`` is called or `limit` seconds have passed. Called once every
    /// other mapping moved: the teardown holds this process's mmap lock.
    ///
    /// The teardown of a populated 256 MiB mapping costs ~6 ms of CPU (and TLB shootdowns
    /// on the other CPUs): run at once, it took a CPU from the resumed guest's handshakes,
    /// so it waits until the devices are connected again.
    func dropMovedAside(limit: Double = 2) {
        let settled = DispatchSemaphore(value: 0)
        guard let (old, fds, lastFDs, earlier) = lock.withLock({ () -> ([(UInt, Int)], [Int32], [Int32], DispatchSemaphore?)? in
            guard !movedAside.isEmpty || !closeAside.isEmpty || !closeAfterUnmap.isEmpty else { return nil }
            defer { (movedAside, closeAside, closeAfterUnmap, unsettled) = ([], [], [], settled) }
            return (movedAside, closeAside, closeAfterUnmap, unsettled)
        }) else { return }
        // A resume that follows one not settled yet starts the earlier teardown now.
        earlier?.signal()
        // In slices, yielding between them: one munmap of a populated 256 MiB holds this
        // process's mmap lock for ms, and every mmap and munmap the resumed guest makes
        // meanwhile waits behind it. (Idle priority would hold the lock while waiting for
        // an idle CPU: tried, the next migration's handshakes waited behind it.)
        let slice = 2 << 20
        startDetachedThread(named: "unmap-old-host") {
            _ = settled.wait(timeout: .now() + limit)
            for fd in fds { close(fd) }
            for (address, length) in old {
                for offset in stride(from: 0, to: length, by: slice) {
                    munmap(UnsafeMutableRawPointer(bitPattern: address + UInt(offset)), min(slice, length - offset))
                    sched_yield()
                }
            }
            for fd in lastFDs { close(fd) }
        }
    }

    /// Closes `fd` with the next `dropMovedAside`'s teardown.
    func closeLater(_ fd: Int32) { lock.withLock { closeAside.append(fd) } }

    /// Keeps `uffd`, the userfaultfd just handed to a daemon for this process's
    /// writes, for the next move; the one kept before closes after the next teardown.
    func keepTracking(_ uffd: Int32) {
        lock.withLock {
            if tracking >= 0 { closeAfterUnmap.append(tracking) }
            tracking = uffd
        }
    }

    /// Before moving mappings aside (`replace`): a reader of the kept userfaultfd's
    /// events, which each move of a range registered with it waits for (whole
    /// page-table pages move then, instead of ~1 ms of entries one by one for
    /// 256 MiB). nil when there is none; `finish()` it after the last move.
    func movingTrackedRanges() -> RemapEventReader? {
        let fd = lock.withLock { tracking }
        return fd >= 0 ? RemapEventReader(uffd: fd) : nil
    }

    /// Lets the teardown `dropMovedAside` put off start now.
    func settle() {
        lock.withLock { () -> DispatchSemaphore? in
            defer { unsettled = nil }
            return unsettled
        }?.signal()
    }

    /// Maps the destination's copy of this domain's memory and grant table over the
    /// old ones, at the same addresses (`MAP_FIXED` replaces the old mappings in one
    /// step: no other mapping can land in between).
    func move(memoryFD: Int32, tableFD: Int32) throws(HypervisorError) {
        let bytes = totalFrames * XenPage.size
        // The old mapping's page tables move aside first (cheap: whole page-table pages
        // move, see `movingTrackedRanges`), so the new mapping replaces nothing; tearing
        // down the old one's populated entries (tens of ms for 256 MiB) happens on another
        // thread after the resume (`dropMovedAside`).
        try replace(base, bytes: bytes, with: memoryFD, what: "memory")
        guard let t = mmap(table, tableEntries * MemoryLayout<grant_entry_v1>.stride, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, tableFD, 0),
            t == table
        else { throw .errno(Errno(rawValue: errno), "mapping the destination's grant table at the same address") }
    }

    /// Maps `bytes` of `fd` at `base` in place of the mapping there, whose page tables move
    /// aside (when they can) for `dropMovedAside` to tear down later (see `move`). Returns
    /// where they went, nil if they were replaced in place.
    @discardableResult
    func replace(_ base: UnsafeMutableRawPointer, bytes: Int, with fd: Int32, what: String) throws(HypervisorError)
        -> UnsafeMutableRawPointer? {
        let aside = Self.moveAside(base, bytes: bytes)
        guard let m = mmap(base, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0), m == base else {
            throw .errno(Errno(rawValue: errno), "mapping the destination's \(what) at the same address")
        }
        if let aside { lock.withLock { movedAside.append((UInt(bitPattern: aside.address), aside.length)) } }
        return aside?.address
    }

    /// Moves the mapping at `base` to a reserved region with the same alignment within
    /// 2 MiB (so whole page-table pages move); nil if it could not (the caller's
    /// `MAP_FIXED` then replaces it in place, slower).
    private static func moveAside(_ base: UnsafeMutableRawPointer, bytes: Int) -> (address: UnsafeMutableRawPointer, length: Int)? {
        let huge = 2 << 20
        let length = bytes + huge
        guard let region = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), region != MAP_FAILED else {
            return nil
        }
        let r = UInt(bitPattern: region), offset = UInt(bitPattern: base) % UInt(huge)
        var target = (r / UInt(huge)) * UInt(huge) + offset
        if target < r { target += UInt(huge) }
        guard let to = UnsafeMutableRawPointer(bitPattern: target), cxen_mremap_fixed(base, bytes, to) == 0 else {
            munmap(region, length)
            return nil
        }
        // The reservation's ends around the moved mapping go now; the mapping later.
        if target > r { munmap(region, Int(target - r)) }
        let tail = r + UInt(length) - (target + UInt(bytes))
        if tail > 0, let end = UnsafeMutableRawPointer(bitPattern: target + UInt(bytes)) { munmap(end, Int(tail)) }
        return (to, bytes)
    }

    /// After a resume every grant reference of before is gone (`SuspendOutcome.resumed`):
    /// this process's entries are cleared and all its references are free again.
    func forgetGrants() {
        lock.withLock {
            for r in refs { header(r).store(0, ordering: .relaxed) }
            granted = []
            freeRefs = Array(refs.reversed())
        }
    }

    // MARK: PageAllocator

    func allocatePages(_ count: Int) throws(HypervisorError) -> GuestPages {
        guard count > 0 else { throw .errno(.invalidArgument, "allocating \(count) pages") }
        let first: Int = try lock.withLock { () throws(HypervisorError) -> Int in
            guard let start = used.take(count) else {
                throw .errno(.noMemory, "\(owner) has no run of \(count) free pages in this process's slice")
            }
            return frames.lowerBound + start
        }
        let pages = MappedPages(base: base + first * XenPage.size, count: count)
        memset(pages.base, 0, pages.byteCount)
        return GuestPages(first: FrameNumber(UInt64(first)), memory: pages)
    }

    func freePages(_ pages: GuestPages) throws(HypervisorError) {
        let first = Int(pages.first.rawValue)
        let range = first..<(first + pages.memory.count)
        guard pages.memory.count > 0, frames.contains(first), range.upperBound <= frames.upperBound,
            pages.memory.base == base + first * XenPage.size
        else { throw .errno(.invalidArgument, "\(pages.first)+\(pages.memory.count) are not pages of this process") }
        let stillGranted = grantedRefs(in: UInt64(range.lowerBound)..<UInt64(range.upperBound))
        guard stillGranted.isEmpty else {
            throw .errno(.resourceBusy, "frames of \(owner) still granted: \(stillGranted.sorted())")
        }
        try lock.withLock { () throws(HypervisorError) in
            let r = (range.lowerBound - frames.lowerBound)..<(range.upperBound - frames.lowerBound)
            guard used.allTaken(r) else { throw .errno(.invalidArgument, "pages not all allocated") }
            used.release(r)
        }
    }

    /// References this process granted that name a frame in `frames`.
    func grantedRefs(in frames: Range<UInt64>) -> [UInt32] {
        lock.withLock { granted.filter { frames.contains(UInt64(frame($0))) } }
    }

    // MARK: The guest side of the grant table (grant_table.h)

    private func header(_ ref: UInt32) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (table + Int(ref) * 8).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    private func frameWord(_ ref: UInt32) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (table + Int(ref) * 8 + 4).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    private func frame(_ ref: UInt32) -> UInt32 {
        // relaxed: our own earlier store, read back under the guest lock.
        frameWord(ref).load(ordering: .relaxed)
    }

    /// Grants `frame` to `grantee` ("Introducing a valid entry").
    func grantAccess(frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) -> GrantRef {
        let ref: UInt32 = try lock.withLock { () throws(HypervisorError) -> UInt32 in
            guard let ref = freeRefs.popLast() else { throw .errno(.noSpace, "grant references of this process are used up") }
            granted.insert(ref)
            return ref
        }
        frameWord(ref).store(UInt32(truncatingIfNeeded: frame.rawValue), ordering: .relaxed)
        let flags = UInt32(GTF_permit_access) | (readOnly ? UInt32(GTF_readonly) : 0)
        // releasing: the frame is visible before the flags say the entry is valid.
        header(ref).store(flags | UInt32(grantee.rawValue) << 16, ordering: .releasing)
        return GrantRef(ref)
    }

    /// Ends access ("Invalidating an unused GTF_permit_access entry"); `.busy` while mapped.
    func endAccess(_ ref: GrantRef) throws(HypervisorError) {
        let r = ref.rawValue
        guard lock.withLock({ granted.contains(r) }) else { throw .grant(.badGrantRef, "\(ref) was not granted here") }
        let h = header(r)
        // acquiring: once the daemon's unpin is seen, the mapper's accesses are over.
        var current = h.load(ordering: .acquiring)
        while true {
            if current & UInt32(GTF_reading | GTF_writing) != 0 {
                throw HypervisorError(.busy, "ending access to \(ref) of \(owner)")
            }
            // acquiringAndReleasing: a full barrier, as Linux's sync_cmpxchg, so a racing
            // pin and this exchange cannot both succeed.
            let (done, seen) = h.compareExchange(expected: current, desired: current & 0xFFFF_0000, ordering: .acquiringAndReleasing)
            if done { break }
            current = seen
        }
        lock.withLock {
            granted.remove(r)
            freeRefs.append(r)
        }
    }

    /// Re-grants `ref` right after it was ended (rolling back a partial unshare).
    func regrant(_ ref: GrantRef, frame: FrameNumber, to grantee: DomainID, readOnly: Bool) {
        let r = ref.rawValue
        let took = lock.withLock { () -> Bool in
            guard let i = freeRefs.lastIndex(of: r) else { return false }
            freeRefs.remove(at: i)
            granted.insert(r)
            return true
        }
        guard took else { return }
        frameWord(r).store(UInt32(truncatingIfNeeded: frame.rawValue), ordering: .relaxed)
        let flags = UInt32(GTF_permit_access) | (readOnly ? UInt32(GTF_readonly) : 0)
        // releasing: as in grantAccess.
        header(r).store(flags | UInt32(grantee.rawValue) << 16, ordering: .releasing)
    }
}
