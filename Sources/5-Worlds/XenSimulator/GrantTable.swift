import XenLocks
import Atomics
import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// One domain's v1 grant table: an array of Xen's `grant_entry_v1` in shared
/// memory that the domain writes, plus the hypervisor's private bookkeeping of
/// which entries are pinned (Xen's "active" entries).
///
/// Both sides follow the protocol in `grant_table.h`. The first 32 bits of an
/// entry (`flags`, `domid`) are accessed as one atomic word, as Xen's
/// `grant_combo` does, so the hypervisor's compare-exchange that sets
/// `GTF_reading`/`GTF_writing` also proves the grantee id did not change under it.
final class GrantTable: @unchecked Sendable {
    // @unchecked: `active` and `dead` are guarded by `lock`, the guest-side
    // free list by `guestLock`; entries in shared memory are accessed only
    // through atomics (or by tests, single-threaded, through `entry(_:)`).

    /// Entries of `grant_entry_v1` per 4 KiB table frame.
    static let entriesPerFrame = XenPage.size / MemoryLayout<grant_entry_v1>.stride

    let owner: DomainID
    let count: Int
    /// Frames the owner has; a grant naming a frame beyond is `GNTST_bad_page`.
    let ownerFrames: Int
    let memory: SharedMemory
    /// The owner's log-dirty, marked when a writable pin is dropped.
    let dirty: DirtyLog

    /// Hypervisor side: pins per entry, and whether the owner is gone.
    let lock = Lock()
    private let active: UnsafeMutablePointer<ActiveEntry>
    private var dead = false

    /// Guest side (what a kernel's gnttab keeps): free references and which
    /// entries the guest itself handed out.
    private let guestLock = Lock()
    private var freeRefs: [UInt32]
    private var granted: [Bool]

    /// Xen's per-entry pin state (`struct active_grant_entry`), reduced to v1
    /// host mappings and copies.
    struct ActiveEntry {
        var pins: Int32 = 0
        var writePins: Int32 = 0
        var grantee = DomainID(0)
        /// The frame captured at the first pin; later pins use it, never the
        /// entry's frame field again (the guest could rewrite it).
        var frame: UInt64 = 0
    }

    init(owner: DomainID, frames tableFrames: Int, ownerFrames: Int, machine: String, dirty: DirtyLog) throws(HypervisorError) {
        precondition(tableFrames > 0, "a grant table needs at least one frame")
        self.owner = owner
        self.dirty = dirty
        self.ownerFrames = ownerFrames
        self.count = tableFrames * Self.entriesPerFrame
        self.memory = try SharedMemory(name: "\(machine)-dom\(owner.rawValue)-gnttab", pages: tableFrames)
        memory.base.bindMemory(to: grant_entry_v1.self, capacity: count)
        active = .allocate(capacity: count)
        active.initialize(repeating: ActiveEntry(), count: count)
        // Like a kernel's gnttab, hand out refs above the reserved ones, lowest first.
        freeRefs = Array((GrantRef.reservedCount..<UInt32(count)).reversed())
        granted = Array(repeating: false, count: count)
    }

    deinit {
        active.deinitialize(count: count)
        active.deallocate()
    }

    /// The raw entry (for tests that play a hostile guest).
    func entry(_ ref: UInt32) -> UnsafeMutablePointer<grant_entry_v1> {
        precondition(Int(ref) < count, "grant reference beyond the table")
        return memory.base.assumingMemoryBound(to: grant_entry_v1.self) + Int(ref)
    }

    /// `flags | domid << 16`: the first half of the entry as one atomic word.
    private func header(_ ref: UInt32) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (memory.base + Int(ref) * 8).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    /// The `frame` field. The guest may rewrite it at any time, so both sides
    /// access it atomically (relaxed: ordering comes from the header word).
    private func frameWord(_ ref: UInt32) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (memory.base + Int(ref) * 8 + 4).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    private static let reading = UInt32(GTF_reading)
    private static let writing = UInt32(GTF_writing)

    // MARK: - Guest side (a guest kernel's gnttab)

    /// Grants `frame` to `grantee` in a free entry, the way `grant_table.h`
    /// says to introduce a valid entry.
    func grantAccess(frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) -> GrantRef {
        guard frame.rawValue <= UInt64(UInt32.max) else {
            throw .errno(.invalidArgument, "frame \(frame) does not fit a v1 grant entry")
        }
        let ref: UInt32 = try guestLock.withLock { () throws(HypervisorError) -> UInt32 in
            // ENOSPC: what Linux's gnttab_grant_foreign_access returns when full.
            guard let ref = freeRefs.popLast() else { throw .errno(.noSpace, "grant table of \(owner) is full") }
            granted[Int(ref)] = true
            return ref
        }
        publish(ref, frame: UInt32(frame.rawValue), grantee: grantee, readOnly: readOnly)
        return GrantRef(ref)
    }

    /// Fills a reserved entry (`GNTTAB_RESERVED_CONSOLE`, `_XENSTORE`), as the
    /// toolstack does at domain creation.
    func grantReserved(_ ref: GrantRef, frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) {
        guard ref.rawValue < GrantRef.reservedCount, frame.rawValue <= UInt64(UInt32.max) else {
            throw .errno(.invalidArgument, "\(ref) is not a reserved entry")
        }
        try guestLock.withLock { () throws(HypervisorError) in
            guard !granted[Int(ref.rawValue)] else { throw .errno(.resourceBusy, "\(ref) is already granted") }
            granted[Int(ref.rawValue)] = true
        }
        publish(ref.rawValue, frame: UInt32(frame.rawValue), grantee: grantee, readOnly: readOnly)
    }

    /// Grants `ref` again right after it was ended (rolling back a partial
    /// unshare); fails if someone else took the reference meanwhile.
    func regrant(_ ref: GrantRef, frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) {
        let r = ref.rawValue
        try guestLock.withLock { () throws(HypervisorError) in
            guard Int(r) < count, !granted[Int(r)] else { throw .errno(.resourceBusy, "\(ref) was taken again") }
            if let i = freeRefs.lastIndex(of: r) { freeRefs.remove(at: i) }
            granted[Int(r)] = true
        }
        publish(r, frame: UInt32(truncatingIfNeeded: frame.rawValue), grantee: grantee, readOnly: readOnly)
    }

    private func publish(_ ref: UInt32, frame: UInt32, grantee: DomainID, readOnly: Bool) {
        frameWord(ref).store(frame, ordering: .relaxed)
        let flags = UInt32(GTF_permit_access) | (readOnly ? UInt32(GTF_readonly) : 0)
        // releasing: the frame (and domid, in the same word) are visible before
        // the flags say the entry is valid: steps 1-4 of "Introducing a valid
        // entry", the store doing the WMB's work.
        header(ref).store(flags | UInt32(grantee.rawValue) << 16, ordering: .releasing)
    }

    /// Ends access, as `grant_table.h` says to invalidate an unused
    /// `GTF_permit_access` entry: read flags, see neither `GTF_reading` nor
    /// `GTF_writing`, compare-exchange the flags to 0. `.busy` while mapped.
    func endAccess(_ ref: GrantRef) throws(HypervisorError) {
        let r = ref.rawValue
        let mine = Int(r) < count && guestLock.withLock { granted[Int(r)] }
        guard mine else { throw .grant(.badGrantRef, "\(ref) of \(owner) was not granted") }
        let h = header(r)
        // acquiring: once we see the hypervisor's clear of GTF_reading/writing,
        // its last accesses to the frame happened before ours (page reuse).
        var current = h.load(ordering: .acquiring)
        while true {
            if current & (Self.reading | Self.writing) != 0 {
                throw HypervisorError(.busy, "ending access to \(ref) of \(owner)")
            }
            // acquiringAndReleasing: a full barrier like Linux's sync_cmpxchg;
            // against a racing pin exactly one of the two exchanges wins, and
            // reuse of the page cannot move before the entry is invalid.
            let (done, seen) = h.compareExchange(
                expected: current, desired: current & 0xFFFF_0000, ordering: .acquiringAndReleasing)
            if done { break }
            current = seen
        }
        guestLock.withLock {
            granted[Int(r)] = false
            if r >= GrantRef.reservedCount { freeRefs.append(r) }
        }
    }

    // MARK: - Hypervisor side

    /// Pins `ref` for `grantee`, as Xen's `map_grant_ref` and
    /// `acquire_grant_for_copy` do with `_set_status_v1`. Caller holds `lock`.
    /// Returns the frame.
    ///
    /// Statuses: an unknown ref is `GNTST_bad_gntref` as in Xen. Xen 4.x
    /// answers the next three with `GNTST_general_error` (one log line each);
    /// the simulator gives each a distinct code so a test can tell them apart:
    /// an entry that does not permit access is `GNTST_bad_gntref` ("inappropriate
    /// gntref"), an entry granted to another domain and a writable pin of a
    /// read-only grant are `GNTST_permission_denied`. A frame the granter does
    /// not own is `GNTST_bad_page`, as Xen's `get_paged_frame` says.
    func pin(_ ref: GrantRef, for grantee: DomainID, writable: Bool) throws(HypervisorError) -> UInt64 {
        guard !dead else { throw .grant(.badDomain, "\(owner) is being destroyed") }
        let r = ref.rawValue
        guard Int(r) < count else { throw .grant(.badGrantRef, "\(ref) is beyond the \(count) entries of \(owner)") }
        let i = Int(r)
        if active[i].pins > 0 && active[i].grantee != grantee {
            throw .grant(.permissionDenied, "\(ref) of \(owner) is in use by \(active[i].grantee)")
        }
        // A mapper pinning one entry over and over must get an error, not trap
        // the hypervisor on overflow (Xen fails such a map with general_error).
        guard active[i].pins < Int32.max else {
            throw .grant(.generalError, "\(ref) of \(owner) is pinned \(active[i].pins) times already")
        }
        guard active[i].pins == 0 || (writable && active[i].writePins == 0) else {
            return pinned(i, writable: writable)
        }
        let h = header(r)
        // acquiring: pairs with the guest's releasing store of the flags, so the
        // frame it wrote before is what we read below.
        var current = h.load(ordering: .acquiring)
        var retries = 0
        let firstPin = active[i].pins == 0
        while true {
            let flags = UInt16(truncatingIfNeeded: current)
            let domid = UInt16(truncatingIfNeeded: current >> 16)
            if firstPin {
                if UInt32(flags) & UInt32(GTF_type_mask | GTF_sub_page) != UInt32(GTF_permit_access) {
                    throw .grant(.badGrantRef, "\(ref) of \(owner) does not permit access (flags \(flags))")
                }
                if domid != grantee.rawValue {
                    throw .grant(.permissionDenied, "\(ref) of \(owner) is granted to dom\(domid), not \(grantee)")
                }
            }
            if writable && UInt32(flags) & UInt32(GTF_readonly) != 0 {
                throw .grant(.permissionDenied, "writable use of read-only \(ref) of \(owner)")
            }
            let desired = current | Self.reading | (writable ? Self.writing : 0)
            // acquiringAndReleasing: a full barrier, as Xen's guest_cmpxchg; the
            // guest's endAccess must see either our flags or fail our exchange.
            let (done, seen) = h.compareExchange(expected: current, desired: desired, ordering: .acquiringAndReleasing)
            if done { break }
            // Xen gives up after five tries: a guest rewriting its entry this fast
            // is misbehaving and must not livelock the hypervisor.
            retries += 1
            if retries == 5 { throw .grant(.generalError, "\(ref) of \(owner) is unstable") }
            current = seen
        }
        if firstPin {
            let frame = UInt64(frameWord(r).load(ordering: .relaxed))
            guard frame < UInt64(ownerFrames) else {
                // Undo our flags; nobody else held the entry (first pin).
                _ = h.loadThenBitwiseAnd(with: ~(Self.reading | Self.writing), ordering: .releasing)
                throw .grant(.badPage, "\(ref) of \(owner) names frame \(frame), not one of its \(ownerFrames)")
            }
            active[i].frame = frame
            active[i].grantee = grantee
        }
        return pinned(i, writable: writable)
    }

    private func pinned(_ i: Int, writable: Bool) -> UInt64 {
        active[i].pins += 1
        if writable { active[i].writePins += 1 }
        return active[i].frame
    }

    /// Drops one pin; clears `GTF_writing` with the last writable pin and
    /// `GTF_reading` with the last pin (Xen's `unmap_common_complete`). Caller
    /// holds `lock`.
    func unpin(_ ref: GrantRef, writable: Bool) {
        let i = Int(ref.rawValue)
        precondition(active[i].pins > 0 && (!writable || active[i].writePins > 0), "unpin without pin")
        active[i].pins -= 1
        if writable {
            active[i].writePins -= 1
            // The grantee may have written the frame through this pin (a mapping
            // or a copy's destination): Xen marks it dirty on release too.
            dirty.mark(active[i].frame)
        }
        var clear: UInt32 = 0
        if writable && active[i].writePins == 0 { clear |= Self.writing }
        if active[i].pins == 0 { clear |= Self.reading }
        if clear != 0 {
            // releasing: every access through the mapping happens before the
            // guest can see the entry free and reuse the page.
            _ = header(ref.rawValue).loadThenBitwiseAnd(with: ~clear, ordering: .releasing)
        }
    }

    /// Ends every grant above the reserved ones that nobody pins, without the guest's
    /// say (a resume from a saved copy: the new copy's table is empty but for what the
    /// toolstack seeds). Returns the entries ended; a pinned one stays. Caller holds `lock`.
    func revokeUnpinned() -> [Leftovers.Grant] {
        let entries = grantedEntries().filter { $0.ref.rawValue >= GrantRef.reservedCount && active[Int($0.ref.rawValue)].pins == 0 }
        guestLock.withLock {
            for e in entries {
                let r = e.ref.rawValue
                // releasing: as endAccess's exchange, before the ref can be handed out again.
                header(r).store(0, ordering: .releasing)
                if granted[Int(r)] {
                    granted[Int(r)] = false
                    freeRefs.append(r)
                }
            }
        }
        return entries
    }

    /// Stops new pins (domain teardown). Caller holds `lock`.
    func markDead() { dead = true }

    // MARK: - Inspection

    /// Frames pinned writable now: what a mapping may be writing. Caller holds `lock`.
    func writablyPinnedFrames() -> [UInt64] {
        var out: [UInt64] = []
        for i in 0..<count where active[i].writePins > 0 { out.append(active[i].frame) }
        return out
    }

    /// Every entry still permitting access: leftovers, or a reason to refuse freeing a page.
    func grantedEntries() -> [Leftovers.Grant] {
        var out: [Leftovers.Grant] = []
        for r in 0..<UInt32(count) {
            // acquiring: see the frame the guest published with these flags.
            let h = header(r).load(ordering: .acquiring)
            guard h & UInt32(GTF_type_mask) == UInt32(GTF_permit_access) else { continue }
            out.append(
                Leftovers.Grant(
                    granter: owner, ref: GrantRef(r), grantee: DomainID(UInt16(truncatingIfNeeded: h >> 16)),
                    frame: FrameNumber(UInt64(frameWord(r).load(ordering: .relaxed))),
                    readOnly: h & UInt32(GTF_readonly) != 0, inUse: h & (Self.reading | Self.writing) != 0))
        }
        return out
    }
}
