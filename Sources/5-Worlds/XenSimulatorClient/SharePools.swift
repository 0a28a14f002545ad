import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenLocks

/// Where this process's shared pages come from, as xengntshr allocates the
/// pages it shares: a pool per (peer, mode) that the daemon creates and that
/// only that peer may map (`SharePoolRegistry`). A page shared with dom0 and a
/// page shared with another guest never lie in the same file, nor does either
/// lie in the domain's main memory, so mapping one grant can never expose
/// what was not shared with the mapper.
///
/// A pool's pages are reused for later shares with the same peer: after
/// `unshare` that peer can still reach the page until it is shared again,
/// with it. Revocation is per pool, not per page.
final class SharePools: @unchecked Sendable {
    // @unchecked: `pools` and each pool's `used` are guarded by `lock`.
    final class Pool {
        let grantee: DomainID
        let writable: Bool
        let first: UInt64
        let count: Int
        let base: UnsafeMutableRawPointer
        var used: PageRuns

        init(grantee: DomainID, writable: Bool, first: UInt64, count: Int, base: UnsafeMutableRawPointer) {
            self.grantee = grantee
            self.writable = writable
            self.first = first
            self.count = count
            self.base = base
            used = PageRuns(count: count)
        }

        deinit { munmap(base, count * XenPage.size) }

        var frames: Range<UInt64> { first..<(first + UInt64(count)) }
    }

    private let link: DaemonLink
    private let memory: GuestMemory
    /// A guest's pools are its memory: the daemon's log-dirty tracks its writes to them.
    private let tracksWrites: Bool
    private let lock = Lock()
    private var pools: [Pool] = []

    init(link: DaemonLink, memory: GuestMemory, tracksWrites: Bool) {
        self.link = link
        self.memory = memory
        self.tracksWrites = tracksWrites
    }

    /// `count` zeroed, contiguous pages that only `grantee` may map (read-only
    /// for it unless `writable`).
    func allocate(_ count: Int, for grantee: DomainID, writable: Bool) throws(HypervisorError) -> GuestPages {
        guard count > 0 else { throw .errno(.invalidArgument, "sharing \(count) pages") }
        if let pages = lock.withLock({ take(count, grantee, writable) }) { return pages }
        let pool = try newPool(grantee: grantee, writable: writable)
        return try lock.withLock { () throws(HypervisorError) -> GuestPages in
            pools.append(pool)
            guard let pages = take(count, grantee, writable) else {
                throw .errno(.noMemory, "\(count) pages do not fit in one share pool of \(pool.count)")
            }
            return pages
        }
    }

    /// First fit over the pools for (grantee, mode). Caller holds `lock`.
    private func take(_ count: Int, _ grantee: DomainID, _ writable: Bool) -> GuestPages? {
        for pool in pools where pool.grantee == grantee && pool.writable == writable && count <= pool.count {
            guard let start = pool.used.take(count) else { continue }
            let pages = MappedPages(base: pool.base + start * XenPage.size, count: count)
            // A page freed earlier still holds what was shared in it before.
            memset(pages.base, 0, pages.byteCount)
            return GuestPages(first: FrameNumber(pool.first + UInt64(start)), memory: pages)
        }
        return nil
    }

    private func newPool(grantee: DomainID, writable: Bool) throws(HypervisorError) -> Pool {
        let reply = try link.call(WireMessage([DaemonOp.sharePool.rawValue, UInt64(grantee.rawValue), writable ? 1 : 0]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        guard reply.words.count == 3, reply.fds.count == 1, reply.words[2] > 0, reply.words[2] <= 1 << 20,
            reply.words[1] <= UInt64(UInt32.max) - reply.words[2]
        else { throw HypervisorError(.closed, "malformed share-pool reply") }
        let count = Int(reply.words[2])
        let base = try Mapping.map(reply.fds[0], bytes: count * XenPage.size)
        if tracksWrites {
            // Best effort: a daemon that cannot track the range fails log-dirty's start instead.
            _ = try? link.call(WireMessage([DaemonOp.trackWrites.rawValue, UInt64(UInt(bitPattern: base)), reply.words[1], UInt64(count)]))
        }
        return Pool(grantee: grantee, writable: writable, first: reply.words[1], count: count, base: base)
    }

    /// Maps the destination's copies of the pools over the old ones, at the same
    /// addresses (`adopted`: first frame, frames and descriptor of each, from
    /// `DaemonOp.adoptPools`). A pool the destination lacks is an error: its pages
    /// would silently stop being shared memory.
    func move(to adopted: [(first: UInt64, count: Int, fd: Int32)]) throws(HypervisorError) {
        let mine = lock.withLock { pools }
        for pool in mine {
            guard let a = adopted.first(where: { $0.first == pool.first && $0.count == pool.count }) else {
                throw HypervisorError(.closed, "the destination has no share pool at frame \(pool.first)")
            }
            // Its old pages' teardown (rings and buffers in use: ~1 ms) waits as the memory's does.
            try memory.replace(pool.base, bytes: pool.count * XenPage.size, with: a.fd, what: "share pool")
        }
    }

    /// Hands the daemon each pool's range for write tracking (after a move: the
    /// destination's daemon tracks a new userfaultfd).
    func trackAll(through link: DaemonLink) {
        guard tracksWrites else { return }
        for pool in lock.withLock({ pools }) {
            _ = try? link.call(WireMessage([DaemonOp.trackWrites.rawValue, UInt64(UInt(bitPattern: pool.base)), pool.first, UInt64(pool.count)]))
        }
    }

    /// Returns pages taken by `allocate`; refused while any of them is granted.
    func free(_ pages: GuestPages) throws(HypervisorError) {
        let first = pages.first.rawValue
        let n = UInt64(pages.memory.count)
        try lock.withLock { () throws(HypervisorError) in
            guard n > 0,
                let pool = pools.first(where: { $0.frames.contains(first) && first + n <= $0.frames.upperBound }),
                pages.memory.base == pool.base + Int(first - pool.first) * XenPage.size
            else { throw .errno(.invalidArgument, "\(pages.first)+\(n) are not shared pages of this process") }
            let start = Int(first - pool.first)
            let r = start..<(start + Int(n))
            guard pool.used.allTaken(r) else { throw .errno(.invalidArgument, "pages not all allocated") }
            let still = memory.grantedRefs(in: first..<(first + n))
            guard still.isEmpty else { throw .errno(.resourceBusy, "frames of \(memory.owner) still granted: \(still.sorted())") }
            pool.used.release(r)
        }
    }
}
