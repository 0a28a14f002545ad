import XenLocks
import Atomics
import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// A grant-mapping handle of a joined process, shaped like `xengnttab`.
///
/// A map asks the daemon, which checks and pins the entries in the granter's
/// table exactly as the in-process simulator does (same statuses) and answers
/// with the frames and the share pools they lie in. The process then maps
/// those frames itself and closes the pools' descriptors. Unmap removes the
/// view first, then asks the daemon to unpin.
///
/// Trust: the daemon hands over only pools the granter set aside for this
/// process's domain (`SharePoolRegistry`), read-only ones read-only, never
/// the granter's main memory. Within such a pool the process can reach every
/// page, granted yet or not: real Xen limits a mapping to the granted frame,
/// here the limit is what the granter shares with us.
final class RemoteGrantMapper: GrantMapper, @unchecked Sendable {
    // @unchecked: `mine` and `closed` are guarded by `lock`.
    private let hypervisor: RemoteHypervisor
    private let lock = Lock()
    /// Handles of live maps, with the hypervisor's epoch when each was made.
    private var mine: [UInt32: UInt64] = [:]
    private var closed = false

    init(hypervisor: RemoteHypervisor) { self.hypervisor = hypervisor }

    // relaxed: compared only.
    private var currentEpoch: UInt64 { hypervisor.epoch.load(ordering: .relaxed) }

    func map(_ ref: GrantRef, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try mapRefs([ref], from: domain, writable: writable)
    }

    func map(_ refs: UnsafeBufferPointer<GrantRef>, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try mapRefs(Array(refs), from: domain, writable: writable)
    }

    private func mapRefs(_ refs: [GrantRef], from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "map on a closed grant mapper") }
        guard !refs.isEmpty, refs.count <= 256 else { throw .errno(.invalidArgument, "map of \(refs.count) references") }
        hypervisor.mapped(domain)
        var handle: UInt32?
        var fds: [Int32] = []
        defer { for fd in fds { Glibc.close(fd) } }
        do throws(HypervisorError) {
            // Word 3 once said whether we held the granter's memory; pools come with every reply.
            var words: [UInt64] = [DaemonOp.map.rawValue, UInt64(domain.rawValue), writable ? 1 : 0, 0]
            words += refs.map { UInt64($0.rawValue) }
            let reply = try hypervisor.link.call(WireMessage(words))
            fds = reply.fds
            guard reply.words.count >= 3 else { throw HypervisorError(.closed, "malformed map reply") }
            handle = UInt32(truncatingIfNeeded: reply.words[1])
            let w = reply.words
            let poolCount = reply.fds.count
            guard w[2] == UInt64(poolCount), w.count == 3 + 2 * poolCount + refs.count else {
                throw HypervisorError(.closed, "malformed map reply")
            }
            var sources: [(fd: Int32, page: Int)] = []
            for frame in w[(3 + 2 * poolCount)...] {
                var source: (fd: Int32, page: Int)?
                for i in 0..<poolCount {
                    let first = w[3 + 2 * i]
                    let count = min(w[4 + 2 * i], 1 << 20)
                    if frame >= first && frame - first < count { source = (reply.fds[i], Int(frame - first)) }
                }
                guard let source else { throw HypervisorError(.closed, "map reply names a frame outside the pools it sent") }
                sources.append(source)
            }
            let base = try Mapping.pages(sources, writable: writable)
            let epoch = currentEpoch
            lock.withLock { mine[handle!] = epoch }
            return GrantMapping(domain: domain, memory: MappedPages(base: base, count: refs.count), handle: GrantHandle(handle!),
                                writable: writable)
        } catch {
            if let handle { _ = try? hypervisor.link.call(WireMessage([DaemonOp.unmap.rawValue, UInt64(handle)])) }
            hypervisor.unmapped(domain)
            throw error
        }
    }

    func unmap(_ mapping: GrantMapping) throws(HypervisorError) {
        guard let epoch = lock.withLock({ mine.removeValue(forKey: mapping.handle.rawValue) }) else {
            throw .grant(.badHandle, "unmap: \(mapping.handle) is not a mapping of this handle")
        }
        // The view goes first: once the granter sees its flags clear, we can no longer touch the pages.
        munmap(mapping.memory.base, mapping.memory.byteCount)
        // A map from before a move was released with the old host.
        guard epoch == currentEpoch else { return }
        hypervisor.unmapped(mapping.domain)
        _ = try hypervisor.link.call(WireMessage([DaemonOp.unmap.rawValue, UInt64(mapping.handle.rawValue)]))
    }

    /// Grant copy without the daemon: dom0 reads the granter's table and copies
    /// between the pools the granter shares with it and our memory directly.
    ///
    /// Each granted end is checked as Xen's `acquire_grant_for_copy` checks it
    /// (permit-access, granted to us, writable for a destination, a frame the
    /// granter shares with us, writably for a destination) from one atomic
    /// read of the entry. It is not pinned: a granter that ends access while a
    /// copy of its own request is in flight can only harm its own data, which
    /// a well-behaved frontend never does (it ends access after the response).
    /// Only dom0 may copy (the daemon refuses a guest the foreign access this
    /// needs); a guest's segments fail with `GNTST_permission_denied`.
    ///
    /// A frame in no pool we know may lie in a pool the granter made since we
    /// last asked: we ask the daemon again, once per call and domain, so a
    /// granter naming bogus frames costs one round trip per batch, not per segment.
    func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError) {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "copy on a closed grant mapper") }
        var refreshed: [DomainID] = []
        for i in segments.indices {
            segments[i].status = copyOne(segments[i], &refreshed)
        }
    }

    private func copyOne(_ s: GrantCopySegment, _ refreshed: inout [DomainID]) -> GrantStatus {
        let length = Int(s.length)
        guard fits(s.source, length), fits(s.destination, length) else { return .badCopyArgument }
        let from = resolve(s.source, writable: false, &refreshed)
        guard let src = from.address else { return from.status }
        let to = resolve(s.destination, writable: true, &refreshed)
        guard let dst = to.address else { return to.status }
        // The views stay mapped while we copy, even if the last unmap of their domain drops them meanwhile.
        withExtendedLifetime((from.view, to.view)) { _ = memmove(dst, src, length) }
        // After the bytes, as Xen marks a copy's destination when it releases it (log-dirty).
        if let view = to.view { view.markDirty(to.frame) }
        return .okay
    }

    private func fits(_ end: GrantCopySegment.End, _ length: Int) -> Bool {
        if case .foreign(_, _, let offset) = end { return Int(offset) + length <= XenPage.size }
        return true
    }

    private func resolve(_ end: GrantCopySegment.End, writable: Bool, _ refreshed: inout [DomainID])
        -> (address: UnsafeMutableRawPointer?, status: GrantStatus, view: RemoteHypervisor.ForeignDomain?, frame: UInt64)
    {
        switch end {
        case .local(let p):
            return (p, .okay, nil, 0)
        case .foreign(let domain, let ref, let offset):
            guard hypervisor.isPrivileged else { return (nil, .permissionDenied, nil, 0) }
            guard var f = try? hypervisor.foreignDomain(domain) else { return (nil, .badDomain, nil, 0) }
            guard Int(ref.rawValue) < f.entries else { return (nil, .badGrantRef, nil, 0) }
            let entry = f.table + Int(ref.rawValue) * 8
            // acquiring: pairs with the granter's releasing store of the flags,
            // so the frame read next is the one it wrote before.
            let header = UnsafeAtomic<UInt32>(at: entry.assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
                .load(ordering: .acquiring)
            // relaxed: ordered by the acquire above.
            let frame = UnsafeAtomic<UInt32>(at: (entry + 4).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
                .load(ordering: .relaxed)
            let flags = header & 0xFFFF
            guard flags & UInt32(GTF_type_mask | GTF_sub_page) == UInt32(GTF_permit_access) else { return (nil, .badGrantRef, nil, 0) }
            guard UInt16(truncatingIfNeeded: header >> 16) == hypervisor.domainID.rawValue else { return (nil, .permissionDenied, nil, 0) }
            if writable && flags & UInt32(GTF_readonly) != 0 { return (nil, .permissionDenied, nil, 0) }
            var pool = f.pool(containing: UInt64(frame))
            if pool == nil, !refreshed.contains(domain) {
                refreshed.append(domain)
                if let again = try? hypervisor.foreignDomain(domain, refresh: true) {
                    f = again
                    pool = f.pool(containing: UInt64(frame))
                }
            }
            guard let pool else { return (nil, .badPage, nil, 0) }
            if writable && !pool.writable { return (nil, .permissionDenied, nil, 0) }
            return (pool.base + Int(UInt64(frame) - pool.first) * XenPage.size + Int(offset), .okay, f, UInt64(frame))
        }
    }

    func close() {
        lock.withLock { closed = true }
    }
}

/// A grant-sharing handle of a joined process, shaped like `xengntshr`:
/// granting is this process's own write to its grant table, with no daemon
/// round trip; the pages come from the pool set aside for the peer
/// (`SharePools`), which costs a round trip only when a new pool is needed.
final class RemoteGrantSharer: GrantSharer, @unchecked Sendable {
    // @unchecked: `shares` and `closed` are guarded by `lock`.
    private let memory: GuestMemory
    private let pools: SharePools
    private let epoch: ManagedAtomic<UInt64>
    private let lock = Lock()
    private var shares: [UnsafeMutableRawPointer: (pages: GuestPages, epoch: UInt64)] = [:]
    private var closed = false

    init(memory: GuestMemory, pools: SharePools, epoch: ManagedAtomic<UInt64>) {
        self.memory = memory
        self.pools = pools
        self.epoch = epoch
    }

    func sharePages(count: Int, with peer: DomainID, writable: Bool) throws(HypervisorError) -> SharedPages {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "share on a closed grant sharer") }
        let pages = try pools.allocate(count, for: peer, writable: writable)
        var refs: [GrantRef] = []
        do {
            for i in 0..<count { refs.append(try memory.grantAccess(frame: pages.frame(i), to: peer, readOnly: !writable)) }
        } catch {
            for ref in refs { try? memory.endAccess(ref) }
            try? pools.free(pages)
            throw error
        }
        // relaxed: compared only.
        let now = epoch.load(ordering: .relaxed)
        lock.withLock { shares[pages.memory.base] = (pages, now) }
        return SharedPages(peer: peer, refs: refs, writable: writable, memory: pages.memory)
    }

    func unshare(_ shared: SharedPages) throws(HypervisorError) {
        let (pages, sharedIn) = try lock.withLock { () throws(HypervisorError) -> (GuestPages, UInt64) in
            guard let p = shares[shared.memory.base], p.pages.memory == shared.memory else {
                throw .errno(.invalidArgument, "unshare of pages this sharer did not share")
            }
            return p
        }
        // relaxed: compared only. Shared before a move: the references are gone, the pages come back.
        if sharedIn != epoch.load(ordering: .relaxed) {
            lock.withLock { _ = shares.removeValue(forKey: shared.memory.base) }
            try pools.free(pages)
            return
        }
        for (i, ref) in shared.refs.enumerated() {
            do { try memory.endAccess(ref) } catch {
                for (j, ended) in shared.refs[0..<i].enumerated() {
                    memory.regrant(ended, frame: pages.frame(j), to: shared.peer, readOnly: !shared.writable)
                }
                throw error
            }
        }
        lock.withLock { _ = shares.removeValue(forKey: shared.memory.base) }
        try pools.free(pages)
    }

    /// Frees the pages of a share made before a move (its references went with the old
    /// epoch), for the pool to hand out again; a share of this epoch is still granted and
    /// keeps its pages (freeing them under a grant would let the peer reach reused memory).
    func forget(_ shared: SharedPages) {
        let pages = lock.withLock { () -> GuestPages? in
            // relaxed: compared only.
            guard let p = shares[shared.memory.base], p.pages.memory == shared.memory,
                p.epoch != epoch.load(ordering: .relaxed)
            else { return nil }
            shares.removeValue(forKey: shared.memory.base)
            return p.pages
        }
        if let pages { try? pools.free(pages) }
    }

    /// Grants the pages of a share made before a move again (see `GrantSharer`): the
    /// pages are this domain's memory, which moved with it; only the references went.
    func shareAgain(_ shared: SharedPages) throws(HypervisorError) -> SharedPages {
        // relaxed: compared only.
        let now = epoch.load(ordering: .relaxed)
        let pages = try lock.withLock { () throws(HypervisorError) -> GuestPages in
            guard !closed else { throw HypervisorError(.closed, "share on a closed grant sharer") }
            guard let p = shares[shared.memory.base], p.pages.memory == shared.memory, p.epoch != now else {
                throw .errno(.invalidArgument, "sharing again pages that were not shared before a resume")
            }
            // Taken out while granted afresh: a concurrent forget or second call finds nothing.
            shares.removeValue(forKey: shared.memory.base)
            return p.pages
        }
        var refs: [GrantRef] = []
        do {
            for i in 0..<pages.memory.count {
                refs.append(try memory.grantAccess(frame: pages.frame(i), to: shared.peer, readOnly: !shared.writable))
            }
        } catch {
            for ref in refs { try? memory.endAccess(ref) }
            try? pools.free(pages)
            throw error
        }
        lock.withLock { shares[pages.memory.base] = (pages, now) }
        return SharedPages(peer: shared.peer, refs: refs, writable: shared.writable, memory: pages.memory)
    }

    func close() { lock.withLock { closed = true } }
}
