import CPageTracking
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenLocks

/// The writes one process makes to ranges of a domain's frames, seen through a
/// userfaultfd that process created and its `/proc/PID/pagemap`.
///
/// Why this mechanism: a domain's frames are memfd (shmem) pages mapped by the
/// processes that write them, and this kernel has no soft-dirty bits. A
/// userfaultfd in asynchronous write-protect mode lets the kernel resolve every
/// write fault itself (the writer never stops) while the page table records the
/// write; the `PAGEMAP_SCAN` ioctl then returns the written pages of a range and
/// protects them again in one call (0.1–3 ms for 256 MiB). Protection lives in
/// a process's page tables, so a userfaultfd sees only the process that created
/// it: each writer creates one (`cpt_uffd_open`) and hands it, with its own
/// pagemap descriptor, to the tracker, which may be another process (the
/// hypervisor daemon receives them over `SCM_RIGHTS`). Protection is per
/// mapping: writes through another mapping of the same memfd (a grant map's
/// second view) are not seen here, which is why the grant code logs those.
///
/// Ranges are known from the start; they are write-protected only while armed
/// (logging on), so an idle domain pays nothing.
package final class PageWriteTracker: @unchecked Sendable {
    // @unchecked: every field below is guarded by `lock`.
    struct Range {
        let address: UInt64
        let first: UInt64
        let count: Int
        var end: UInt64 { address + UInt64(count) * UInt64(XenPage.size) }
    }

    private let lock = Lock()
    private let uffd: Int32
    private let pagemap: Int32
    private var ranges: [Range] = []
    private var armed = false
    private var closed = false
    private static let batch = 512

    /// Adopts a userfaultfd made by `cpt_uffd_open` in the tracked process and
    /// that process's `/proc/PID/pagemap` opened read-only; ``close()`` closes both.
    package init(userfaultfd: Int32, pagemap: Int32) {
        uffd = userfaultfd
        self.pagemap = pagemap
    }

    /// A tracker of this process's own writes.
    package static func ownProcess() throws(HypervisorError) -> PageWriteTracker {
        let (uffd, pagemap) = try openOwnDescriptors()
        return PageWriteTracker(userfaultfd: uffd, pagemap: pagemap)
    }

    /// This process's userfaultfd (asynchronous write-protect) and pagemap, to
    /// hand to a tracker; the caller owns both. `EOPNOTSUPP` where the kernel lacks them.
    package static func openOwnDescriptors() throws(HypervisorError) -> (userfaultfd: Int32, pagemap: Int32) {
        let uffd = cpt_uffd_open(0)
        guard uffd >= 0 else {
            throw .errno(.notSupported, "userfaultfd with asynchronous write-protect: \(Errno(rawValue: -uffd))")
        }
        let pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard pagemap >= 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(uffd)
            throw .errno(e, "opening /proc/self/pagemap")
        }
        return (uffd, pagemap)
    }

    /// Adds `count` frames from `first`, mapped at `address` in the tracked
    /// process; protected at once when armed. Ranges must not overlap.
    package func track(address: UInt64, first: FrameNumber, count: Int) throws(HypervisorError) {
        guard count > 0, address % UInt64(XenPage.size) == 0,
            address <= UInt64.max - UInt64(count) * UInt64(XenPage.size)
        else { throw .errno(.invalidArgument, "tracking \(count) pages at \(address)") }
        let range = Range(address: address, first: first.rawValue, count: count)
        try lock.withLock { () throws(HypervisorError) in
            guard !closed else { throw HypervisorError(.closed, "tracking on a closed write tracker") }
            guard !ranges.contains(where: { $0.address < range.end && range.address < $0.end }) else {
                throw .errno(.invalidArgument, "range at \(address) overlaps one tracked already")
            }
            if armed { try register(range) }
            ranges.append(range)
        }
    }

    /// Write-protects every range: writes count from now.
    package func arm() throws(HypervisorError) {
        try lock.withLock { () throws(HypervisorError) in
            guard !closed else { throw HypervisorError(.closed, "arming a closed write tracker") }
            guard !armed else { return }
            for (i, r) in ranges.enumerated() {
                do throws(HypervisorError) { try register(r) } catch {
                    for done in ranges[..<i] { _ = cpt_uffd_unregister(uffd, done.address, done.end - done.address) }
                    throw error
                }
            }
            armed = true
        }
    }

    /// Drops the protection of every range (nothing is tracked until armed again).
    package func disarm() {
        lock.withLock {
            guard armed, !closed else { return }
            // A process that exited took its page tables with it: nothing to undo.
            for r in ranges { _ = cpt_uffd_unregister(uffd, r.address, r.end - r.address) }
            armed = false
        }
    }

    /// Adds every frame written since the last collect (or arm) to `bitmap`
    /// and protects them again. A tracked process that exited writes no more:
    /// its ranges add nothing.
    package func collect(into bitmap: inout DirtyBitmap) throws(HypervisorError) {
        try lock.withLock { () throws(HypervisorError) in
            guard armed, !closed else { return }
            let vec = UnsafeMutablePointer<cpt_region>.allocate(capacity: Self.batch)
            defer { vec.deallocate() }
            for r in ranges {
                var start = r.address
                while start < r.end {
                    var walkEnd: UInt64 = 0
                    let n = cpt_scan_written(pagemap, start, r.end, vec, UInt64(Self.batch), &walkEnd)
                    if n == -Int(ESRCH) { return }
                    guard n >= 0 else { throw .errno(Errno(rawValue: Int32(truncatingIfNeeded: -n)), "PAGEMAP_SCAN") }
                    for i in 0..<Int(n) {
                        // The kernel reports within [start, end); clamp all the same.
                        let lo = max(vec[i].start, r.address), hi = min(vec[i].end, r.end)
                        guard lo < hi else { continue }
                        let page = UInt64(XenPage.size)
                        bitmap.insert(first: FrameNumber(r.first + (lo - r.address) / page), count: Int((hi - lo) / page))
                    }
                    // The walk stops early only when the vector filled up.
                    guard n == Self.batch, walkEnd > start, walkEnd < r.end else { break }
                    start = walkEnd
                }
            }
        }
    }

    /// Unprotects and closes the descriptors; later calls do nothing or fail `.closed`.
    package func close() {
        disarm()
        lock.withLock {
            guard !closed else { return }
            closed = true
            Glibc.close(uffd)
            Glibc.close(pagemap)
        }
    }

    deinit { close() }

    /// Caller holds `lock`.
    private func register(_ r: Range) throws(HypervisorError) {
        let rc = cpt_uffd_register(uffd, r.address, r.end - r.address)
        guard rc == 0 else {
            throw .errno(Errno(rawValue: -rc), "write-protecting \(r.count) frames from gfn:\(r.first) for log-dirty")
        }
    }
}
