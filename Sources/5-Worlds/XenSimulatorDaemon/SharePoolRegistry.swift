import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenLocks

/// The daemon's record of share pools: memory a process sets aside for the
/// pages it shares with one peer, in one mode (writable or read-only).
///
/// A memfd cannot be limited to some of its pages: whoever holds it can map
/// all of it. So the pages a domain grants do not come from its main memory
/// (which never leaves the domain's own process, or dom0's processes) but from a separate memfd per
/// (granting process, grantee, mode), which the daemon creates and gives to
/// the granter. A mapper receives only the pools its grants lie in, and only
/// those set aside for it; dom0's grant copy likewise sees only the pools
/// shared with dom0. What a peer can reach is then what was, is, or is about
/// to be shared with that peer, never another peer's or private data.
///
/// Each pool occupies its own slot of frame numbers above the domain's main
/// memory, so a grant entry keeps naming a plain frame of the granter and the
/// daemon's map finds the pool from the frame alone.
final class SharePoolRegistry: @unchecked Sendable {
    // @unchecked: `regions` and `nextID` are guarded by `lock`.

    /// Frames per pool: 32 MiB, sparse until the granter touches it.
    static let poolFrames = 8192
    /// Pools a guest process may hold (bounds what a guest makes the host keep: 256 MiB).
    static let guestPools = 8
    /// Pools per dom0 process, in its slice's slots.
    static let dom0PoolsPerSlice = 4

    /// Frames above a guest's main memory that its pools occupy.
    static let guestRegion = poolFrames * guestPools

    /// Frames above dom0's main memory that the pools of its processes occupy.
    static func dom0Region(slices: Int) -> Int { poolFrames * dom0PoolsPerSlice * slices }

    struct Pool {
        let id: UInt64
        let granter: DomainID
        let owner: ObjectIdentifier
        let grantee: DomainID
        let writable: Bool
        let first: UInt64
        /// Read-write: for the granter, and for mappers of a writable pool.
        let fd: Int32
        /// The same file opened read-only: for mappers of a read-only pool, so
        /// a read-only grant stays read-only whatever the mapper asks of mmap.
        let readOnlyFD: Int32

        var frames: Range<UInt64> { first..<(first + UInt64(SharePoolRegistry.poolFrames)) }
    }

    private let lock = Lock()
    /// Per granter domain: the first frame of its pool region and its pools by slot.
    private var regions: [DomainID: (base: UInt64, pools: [Int: Pool])] = [:]
    private var nextID: UInt64 = 1

    deinit {
        for (_, r) in regions { for p in r.pools.values where p.fd >= 0 { close(p) } }
    }

    private func close(_ p: Pool) {
        Glibc.close(p.fd)
        Glibc.close(p.readOnlyFD)
    }

    /// Creates a pool for `owner` (a process of `granter` whose pool region
    /// starts at frame `base`, with `slots` of it) to share with `grantee`.
    /// Returns the pool with a duplicate of its read-write descriptor, which
    /// the caller sends and closes.
    func create(owner: ObjectIdentifier, granter: DomainID, base: UInt64, slots: Range<Int>, grantee: DomainID, writable: Bool)
        throws(HypervisorError) -> (Pool, Int32)
    {
        guard grantee.rawValue < DomainID.firstReserved.rawValue else {
            throw .errno(.invalidArgument, "share pool: \(grantee) is not a domain")
        }
        let slot = try lock.withLock { () throws(HypervisorError) -> Int in
            let taken = regions[granter]?.pools ?? [:]
            guard let s = slots.first(where: { taken[$0] == nil }) else {
                throw .errno(.noMemory, "share pool: \(granter) holds its \(slots.count) pools already")
            }
            // Reserved now, filled below: another create cannot take the slot meanwhile.
            regions[granter, default: (base, [:])].pools[s] = Pool(
                id: 0, granter: granter, owner: owner, grantee: grantee, writable: writable, first: 0, fd: -1, readOnlyFD: -1)
            return s
        }
        let pool: Pool
        do throws(HypervisorError) {
            let (fd, ro) = try Self.makeFile(pages: Self.poolFrames)
            pool = lock.withLock {
                defer { nextID += 1 }
                let p = Pool(id: nextID, granter: granter, owner: owner, grantee: grantee, writable: writable,
                             first: base + UInt64(slot * Self.poolFrames), fd: fd, readOnlyFD: ro)
                regions[granter]?.pools[slot] = p
                return p
            }
        } catch {
            lock.withLock { regions[granter]?.pools[slot] = nil }
            throw error
        }
        // Only this owner's departure releases the pool, and the owner is the caller: the fd is open.
        let dup = fcntl(pool.fd, F_DUPFD_CLOEXEC, 0)
        guard dup >= 0 else { throw .errno(Errno(rawValue: errno), "share pool: dup") }
        return (pool, dup)
    }

    /// A restored domain's pool at the frame it had on the source (`first`, a slot
    /// boundary of `granter`'s region from `base`), held by `owner` until its guest
    /// process adopts it. Returns a duplicate of its read-write descriptor.
    func createAt(owner: ObjectIdentifier, granter: DomainID, base: UInt64, slots: Int, first: UInt64, grantee: DomainID,
                  writable: Bool) throws(HypervisorError) -> (Pool, Int32)
    {
        guard first >= base, (first - base) % UInt64(Self.poolFrames) == 0, (first - base) / UInt64(Self.poolFrames) < UInt64(slots) else {
            throw .errno(.invalidArgument, "restore: frame \(first) is not a share-pool slot of \(granter)")
        }
        let slot = Int((first - base) / UInt64(Self.poolFrames))
        return try create(owner: owner, granter: granter, base: base, slots: slot..<(slot + 1), grantee: grantee, writable: writable)
    }

    /// Hands the pools `from` holds for `granter` to `to` (a restored domain's process).
    func reassign(granter: DomainID, from: ObjectIdentifier, to: ObjectIdentifier) {
        lock.withLock {
            guard let r = regions[granter] else { return }
            for (slot, p) in r.pools where p.owner == from {
                regions[granter]?.pools[slot] = Pool(id: p.id, granter: p.granter, owner: to, grantee: p.grantee, writable: p.writable,
                                                     first: p.first, fd: p.fd, readOnlyFD: p.readOnlyFD)
            }
        }
    }

    /// Every pool of `granter`, by first frame, with duplicates of their read-only
    /// (for a save) or read-write (for the process adopting them) descriptors.
    func pools(of granter: DomainID, writable: Bool) throws(HypervisorError) -> (pools: [Pool], fds: [Int32]) {
        try lock.withLock { () throws(HypervisorError) -> ([Pool], [Int32]) in
            let pools = (regions[granter]?.pools.values.filter { $0.fd >= 0 } ?? []).sorted { $0.first < $1.first }
            return (pools, try duplicate(pools, writable: writable))
        }
    }

    /// A memfd of `pages` pages, sealed at that size (a granter truncating its
    /// pool would make its mappers fault), and a read-only descriptor of it.
    private static func makeFile(pages: Int) throws(HypervisorError) -> (Int32, Int32) {
        let fd = cxen_memfd_create("xenpv-share-pool", 1)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "share pool: memfd") }
        guard ftruncate(fd, off_t(pages) * off_t(XenPage.size)) == 0, MemfdSeals.fixSize(fd) else {
            let e = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .errno(e, "share pool: sizing and sealing")
        }
        // Reopening through /proc gives a new open file description with
        // O_RDONLY, which mmap will not map writable.
        let ro = open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC)
        guard ro >= 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .errno(e, "share pool: read-only descriptor")
        }
        return (fd, ro)
    }

    /// Drops the pools `owner` holds (its process left). Mappings of them stay
    /// valid: the kernel keeps a memfd while it is mapped.
    func release(owner: ObjectIdentifier) {
        let dropped = lock.withLock { () -> [Pool] in
            var out: [Pool] = []
            for (domain, r) in regions {
                for (slot, p) in r.pools where p.owner == owner {
                    out.append(p)
                    regions[domain]?.pools[slot] = nil
                }
            }
            return out
        }
        for p in dropped where p.fd >= 0 { close(p) }
    }

    /// Forgets a destroyed domain's region.
    func forget(_ domain: DomainID) {
        let dropped = lock.withLock { regions.removeValue(forKey: domain)?.pools.values.map { $0 } ?? [] }
        for p in dropped where p.fd >= 0 { close(p) }
    }

    /// The pool holding `frame` of `granter`, if any.
    private func poolLocked(_ granter: DomainID, _ frame: UInt64) -> Pool? {
        guard let r = regions[granter], frame >= r.base else { return nil }
        let slot = (frame - r.base) / UInt64(Self.poolFrames)
        guard slot < UInt64(Int.max), let p = r.pools[Int(slot)], p.fd >= 0 else { return nil }
        return p
    }

    /// What a mapper receives for `frames` of `granter` that it pinned: the
    /// pools they lie in, each at most once, with a duplicate descriptor of
    /// the mode the map asked for (the caller sends and closes them).
    ///
    /// A frame outside every pool is private memory: `GNTST_bad_page`. A pool
    /// set aside for another domain, or a writable map of a read-only pool,
    /// is `GNTST_permission_denied`.
    func poolsForMap(granter: DomainID, frames: [UInt64], mapper: DomainID, writable: Bool, limit: Int)
        throws(HypervisorError) -> (pools: [Pool], fds: [Int32])
    {
        // Duplicated under the lock: a concurrent release closes the originals only after removing them.
        try lock.withLock { () throws(HypervisorError) -> ([Pool], [Int32]) in
            var found: [Pool] = []
            for f in frames where !found.contains(where: { $0.frames.contains(f) }) {
                guard let p = poolLocked(granter, f) else {
                    throw .grant(.badPage, "frame \(f) of \(granter) is not in memory shared with anyone")
                }
                guard p.grantee == mapper else {
                    throw .grant(.permissionDenied, "frame \(f) of \(granter) is set aside for \(p.grantee), not \(mapper)")
                }
                guard !writable || p.writable else {
                    throw .grant(.permissionDenied, "frame \(f) of \(granter) lies in memory it shares read-only")
                }
                guard found.count < limit else {
                    throw .grant(.generalError, "one map spans more than \(limit) share pools of \(granter)")
                }
                found.append(p)
            }
            return (found, try duplicate(found, writable: writable))
        }
    }

    /// Every pool `granter` set aside for `grantee` (at most `limit`), with
    /// duplicates of descriptors of each pool's own mode.
    func poolsShared(by granter: DomainID, with grantee: DomainID, limit: Int) throws(HypervisorError) -> (pools: [Pool], fds: [Int32]) {
        try lock.withLock { () throws(HypervisorError) -> ([Pool], [Int32]) in
            let pools = (regions[granter]?.pools.values.filter { $0.grantee == grantee && $0.fd >= 0 } ?? [])
                .sorted { $0.first < $1.first }.prefix(limit)
            var fds: [Int32] = []
            do throws(HypervisorError) {
                for p in pools { fds += try duplicate([p], writable: p.writable) }
            } catch {
                for f in fds { Glibc.close(f) }
                throw error
            }
            return (Array(pools), fds)
        }
    }

    /// Caller holds `lock`.
    private func duplicate(_ pools: [Pool], writable: Bool) throws(HypervisorError) -> [Int32] {
        var fds: [Int32] = []
        for p in pools {
            let d = fcntl(writable ? p.fd : p.readOnlyFD, F_DUPFD_CLOEXEC, 0)
            guard d >= 0 else {
                let e = Errno(rawValue: errno)
                for f in fds { Glibc.close(f) }
                throw .errno(e, "share pools: dup")
            }
            fds.append(d)
        }
        return fds
    }
}
