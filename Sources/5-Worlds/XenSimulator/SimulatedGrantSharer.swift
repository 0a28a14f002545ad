import XenLocks
import XenABI
import XenHypervisor

/// A grant-sharing handle of a simulated domain, shaped like `xengntshr`:
/// allocate pages and grant each to one peer; end the grants and free.
final class SimulatedGrantSharer: GrantSharer, @unchecked Sendable {
    // @unchecked: `shares` and `closed` are guarded by `lock`.
    let domain: SimulatedDomain
    private let lock = Lock()
    /// What each share allocated, by its first page's address.
    private var shares: [UnsafeMutableRawPointer: GuestPages] = [:]
    private var closed = false

    init(domain: SimulatedDomain) { self.domain = domain }

    func sharePages(count: Int, with peer: DomainID, writable: Bool) throws(HypervisorError) -> SharedPages {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "share on a closed grant sharer") }
        let pages = try domain.pageAllocator.allocatePages(count)
        var refs: [GrantRef] = []
        do {
            for i in 0..<count {
                refs.append(try domain.grantAccess(frame: pages.frame(i), to: peer, readOnly: !writable))
            }
        } catch {
            // Nobody knows these refs yet, so ending them cannot be refused.
            for ref in refs { try? domain.endAccess(ref) }
            try? domain.pageAllocator.freePages(pages)
            throw error
        }
        lock.withLock { shares[pages.memory.base] = pages }
        return SharedPages(peer: peer, refs: refs, writable: writable, memory: pages.memory)
    }

    func unshare(_ shared: SharedPages) throws(HypervisorError) {
        let pages: GuestPages = try lock.withLock { () throws(HypervisorError) -> GuestPages in
            guard let pages = shares[shared.memory.base], pages.memory == shared.memory else {
                throw .errno(.invalidArgument, "unshare of pages this sharer did not share")
            }
            return pages
        }
        // End each grant; if the peer still maps one, grant back those already
        // ended so the share is exactly as it was.
        for (i, ref) in shared.refs.enumerated() {
            do {
                try domain.endAccess(ref)
            } catch {
                for (j, ended) in shared.refs[0..<i].enumerated() {
                    try? domain.grantTable.regrant(ended, frame: pages.frame(j), to: shared.peer, readOnly: !shared.writable)
                }
                throw error
            }
        }
        lock.withLock { _ = shares.removeValue(forKey: shared.memory.base) }
        try domain.pageAllocator.freePages(pages)
    }

    /// Frees the pages of a share whose grants a resume revoked; a share still granted
    /// (no resume happened) keeps its pages: freeing them under a grant would let the
    /// peer reach reused memory.
    func forget(_ shared: SharedPages) {
        let pages = lock.withLock { () -> GuestPages? in
            guard let pages = shares[shared.memory.base], pages.memory == shared.memory else { return nil }
            return pages
        }
        guard let pages, (try? domain.pageAllocator.freePages(pages)) != nil else { return }
        lock.withLock { _ = shares.removeValue(forKey: shared.memory.base) }
    }

    /// Grants the pages of a share whose grants a resume revoked to their peer again
    /// (see `GrantSharer`); a share still granted is refused with `EINVAL`.
    func shareAgain(_ shared: SharedPages) throws(HypervisorError) -> SharedPages {
        guard !lock.withLock({ closed }) else { throw HypervisorError(.closed, "share on a closed grant sharer") }
        guard let pages = lock.withLock({ shares[shared.memory.base] }), pages.memory == shared.memory else {
            throw .errno(.invalidArgument, "sharing again pages this sharer did not share")
        }
        let frames = pages.first.rawValue..<(pages.first.rawValue + UInt64(pages.memory.count))
        guard !domain.grantTable.grantedEntries().contains(where: { frames.contains($0.frame.rawValue) }) else {
            throw .errno(.invalidArgument, "sharing again pages that are still granted")
        }
        var refs: [GrantRef] = []
        do {
            for i in 0..<pages.memory.count {
                refs.append(try domain.grantAccess(frame: pages.frame(i), to: shared.peer, readOnly: !shared.writable))
            }
        } catch {
            for ref in refs { try? domain.endAccess(ref) }
            forget(shared)
            throw error
        }
        return SharedPages(peer: shared.peer, refs: refs, writable: shared.writable, memory: pages.memory)
    }

    func close() {
        lock.withLock { closed = true }
    }
}
