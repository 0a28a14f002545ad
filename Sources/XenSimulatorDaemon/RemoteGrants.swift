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
/// with the frames and, the first time, the granter's memory descriptor. The
/// process then maps those frames itself. Unmap removes the view first, then
/// asks the daemon to unpin.
///
/// Trust: a process receives a domain's memory descriptor only after the
/// daemon verified a grant from that domain to the process's domain. A memfd
/// cannot be limited to some of its pages, so from then on that process could
/// map other frames of the granter too; real Xen limits a mapping to the
/// granted frames. dom0 is privileged and may map any guest's memory anyway.
final class RemoteGrantMapper: GrantMapper, @unchecked Sendable {
    // @unchecked: `mine` and `closed` are guarded by `lock`.
    private let hypervisor: RemoteHypervisor
    private let lock = Lock()
    private var mine: Set<UInt32> = []
    private var closed = false

    init(hypervisor: RemoteHypervisor) { self.hypervisor = hypervisor }

    func map(_ ref: GrantRef, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try mapRefs([ref], from: domain, writable: writable)
    }

    func map(_ refs: UnsafeBufferPointer<GrantRef>, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try mapRefs(Array(refs), from: domain, writable: writable)
    }

    private func mapRefs(_ refs: [GrantRef], from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "map on a closed grant mapper") }
        guard !refs.isEmpty, refs.count <= 256 else { throw .errno(.invalidArgument, "map of \(refs.count) references") }
        // Counted first, so a concurrent last unmap cannot drop the cached descriptor under us.
        hypervisor.mapped(domain)
        var handle: UInt32?
        do throws(HypervisorError) {
            let have = hypervisor.cachedMapFD(domain) != nil
            var words: [UInt64] = [DaemonOp.map.rawValue, UInt64(domain.rawValue), writable ? 1 : 0, have ? 1 : 0]
            words += refs.map { UInt64($0.rawValue) }
            let reply = try hypervisor.link.call(WireMessage(words))
            guard reply.words.count == 2 + refs.count else {
                for fd in reply.fds { Glibc.close(fd) }
                throw HypervisorError(.closed, "malformed map reply")
            }
            handle = UInt32(truncatingIfNeeded: reply.words[1])
            for extra in reply.fds.dropFirst() { Glibc.close(extra) }
            let fd: Int32
            if let got = reply.fds.first {
                fd = hypervisor.cacheMapFD(domain, got)
            } else if let cached = hypervisor.cachedMapFD(domain) {
                fd = cached
            } else {
                throw HypervisorError(.closed, "map reply without the granter's memory")
            }
            let base = try Mapping.frames(fd, Array(reply.words[2...]), writable: writable)
            lock.withLock { _ = mine.insert(handle!) }
            return GrantMapping(domain: domain, memory: MappedPages(base: base, count: refs.count), handle: GrantHandle(handle!),
                                writable: writable)
        } catch {
            if let handle { _ = try? hypervisor.link.call(WireMessage([DaemonOp.unmap.rawValue, UInt64(handle)])) }
            hypervisor.unmapped(domain)
            throw error
        }
    }

    func unmap(_ mapping: GrantMapping) throws(HypervisorError) {
        guard lock.withLock({ mine.remove(mapping.handle.rawValue) != nil }) else {
            throw .grant(.badHandle, "unmap: \(mapping.handle) is not a mapping of this handle")
        }
        // The view goes first: once the granter sees its flags clear, we can no longer touch the pages.
        munmap(mapping.memory.base, mapping.memory.byteCount)
        hypervisor.unmapped(mapping.domain)
        _ = try hypervisor.link.call(WireMessage([DaemonOp.unmap.rawValue, UInt64(mapping.handle.rawValue)]))
    }

    /// Grant copy without the daemon: dom0 reads the granter's table and copies
    /// between its memory and ours directly.
    ///
    /// Each granted end is checked as Xen's `acquire_grant_for_copy` checks it
    /// (permit-access, granted to us, writable for a destination, a frame the
    /// granter owns) from one atomic read of the entry. It is not pinned: a
    /// granter that ends access while a copy of its own request is in flight
    /// can only harm its own data, which a well-behaved frontend never does
    /// (it ends access after the response). Only dom0 may copy (the daemon
    /// refuses a guest the foreign access this needs); a guest's segments
    /// fail with `GNTST_permission_denied`.
    func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError) {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "copy on a closed grant mapper") }
        for i in segments.indices {
            segments[i].status = copyOne(segments[i])
        }
    }

    private func copyOne(_ s: GrantCopySegment) -> GrantStatus {
        let length = Int(s.length)
        guard fits(s.source, length), fits(s.destination, length) else { return .badCopyArgument }
        let from = resolve(s.source, writable: false)
        guard let src = from.address else { return from.status }
        let to = resolve(s.destination, writable: true)
        guard let dst = to.address else { return to.status }
        memmove(dst, src, length)
        return .okay
    }

    private func fits(_ end: GrantCopySegment.End, _ length: Int) -> Bool {
        if case .foreign(_, _, let offset) = end { return Int(offset) + length <= XenPage.size }
        return true
    }

    private func resolve(_ end: GrantCopySegment.End, writable: Bool) -> (address: UnsafeMutableRawPointer?, status: GrantStatus) {
        switch end {
        case .local(let p):
            return (p, .okay)
        case .foreign(let domain, let ref, let offset):
            guard hypervisor.isPrivileged else { return (nil, .permissionDenied) }
            guard let f = try? hypervisor.foreignDomain(domain) else { return (nil, .badDomain) }
            guard Int(ref.rawValue) < f.entries else { return (nil, .badGrantRef) }
            let entry = f.table + Int(ref.rawValue) * 8
            // acquiring: pairs with the granter's releasing store of the flags,
            // so the frame read next is the one it wrote before.
            let header = UnsafeAtomic<UInt32>(at: entry.assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
                .load(ordering: .acquiring)
            // relaxed: ordered by the acquire above.
            let frame = UnsafeAtomic<UInt32>(at: (entry + 4).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
                .load(ordering: .relaxed)
            let flags = header & 0xFFFF
            guard flags & UInt32(GTF_type_mask | GTF_sub_page) == UInt32(GTF_permit_access) else { return (nil, .badGrantRef) }
            guard UInt16(truncatingIfNeeded: header >> 16) == hypervisor.domainID.rawValue else { return (nil, .permissionDenied) }
            if writable && flags & UInt32(GTF_readonly) != 0 { return (nil, .permissionDenied) }
            guard Int(frame) < f.frames else { return (nil, .badPage) }
            return (f.memory + Int(frame) * XenPage.size + Int(offset), .okay)
        }
    }

    func close() {
        lock.withLock { closed = true }
    }
}

/// A grant-sharing handle of a joined process, shaped like `xengntshr`:
/// allocation and granting are this process's own writes to its memory and
/// grant table, with no daemon round trip.
final class RemoteGrantSharer: GrantSharer, @unchecked Sendable {
    // @unchecked: `shares` and `closed` are guarded by `lock`.
    private let memory: GuestMemory
    private let lock = Lock()
    private var shares: [UnsafeMutableRawPointer: GuestPages] = [:]
    private var closed = false

    init(memory: GuestMemory) { self.memory = memory }

    func sharePages(count: Int, with peer: DomainID, writable: Bool) throws(HypervisorError) -> SharedPages {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "share on a closed grant sharer") }
        let pages = try memory.allocatePages(count)
        var refs: [GrantRef] = []
        do {
            for i in 0..<count { refs.append(try memory.grantAccess(frame: pages.frame(i), to: peer, readOnly: !writable)) }
        } catch {
            for ref in refs { try? memory.endAccess(ref) }
            try? memory.freePages(pages)
            throw error
        }
        lock.withLock { shares[pages.memory.base] = pages }
        return SharedPages(peer: peer, refs: refs, writable: writable, memory: pages.memory)
    }

    func unshare(_ shared: SharedPages) throws(HypervisorError) {
        let pages = try lock.withLock { () throws(HypervisorError) -> GuestPages in
            guard let p = shares[shared.memory.base], p.memory == shared.memory else {
                throw .errno(.invalidArgument, "unshare of pages this sharer did not share")
            }
            return p
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
        try memory.freePages(pages)
    }

    func close() { lock.withLock { closed = true } }
}
