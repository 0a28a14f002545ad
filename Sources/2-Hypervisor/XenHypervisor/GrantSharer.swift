import XenABI

/// Pages of this domain's memory that one peer domain may map or copy: the
/// result of `xengntshr_share_pages`.
public struct SharedPages: Sendable, Hashable {
    /// The domain the pages are granted to.
    public let peer: DomainID
    /// One grant reference per page, in page order.
    public let refs: [GrantRef]
    /// Whether the peer may write (`GTF_readonly` clear).
    public let writable: Bool
    /// The pages as this domain sees them.
    public let memory: MappedPages

    /// Describes shared pages; made by a ``GrantSharer`` implementation. Traps unless there is one reference per page.
    public init(peer: DomainID, refs: [GrantRef], writable: Bool, memory: MappedPages) {
        precondition(refs.count == memory.count, "one grant reference per page")
        self.peer = peer
        self.refs = refs
        self.writable = writable
        self.memory = memory
    }
}

/// The granting side of the grant table, shaped like `xengntshr`: allocate pages
/// and grant them to a peer in one step; revoke and free them in one step.
///
/// Sharing is a set-up operation; the data path reuses shared pages (persistent
/// grants, buffer pools) rather than sharing per request.
public protocol GrantSharer: AnyObject, Sendable {
    /// Allocates `count` zeroed pages and grants each to `peer`
    /// (`xengntshr_share_pages`). The pages are contiguous in this process.
    func sharePages(count: Int, with peer: DomainID, writable: Bool) throws(HypervisorError) -> SharedPages
    /// Ends the grants and frees the pages (`xengntshr_unshare`). Refused with
    /// `.busy`, changing nothing, while the peer still maps any of them.
    func unshare(_ pages: SharedPages) throws(HypervisorError)
    /// Releases the handle. Pages still shared stay shared and are reported as
    /// leftovers by the simulator.
    func close()
    /// Frees pages whose grants went with the domain's old copy (after a suspend that
    /// came back ``SuspendOutcome/resumed``), without ending the grants: they are no
    /// longer this domain's to end, and ending them could hit a newer grant.
    func forget(_ pages: SharedPages)
    /// Grants pages shared before such a resume to their peer again, under new
    /// references, keeping the pages and what they hold: as Linux's blkfront grants its
    /// buffers anew after a migration rather than allocating new ones (a resumed guest
    /// reconnects in its downtime, and new pages cost faults and zeroing then).
    /// `EINVAL` for pages shared since the resume (still granted) or never shared here.
    func shareAgain(_ pages: SharedPages) throws(HypervisorError) -> SharedPages
}

extension GrantSharer {
    /// Keeps the pages: a world that does not implement it leaks them until the domain goes.
    public func forget(_ pages: SharedPages) {}

    /// Forgets the pages and shares as many new zeroed ones: the same promise (pages
    /// granted to the same peer, in the same mode) where a world cannot grant old pages again.
    public func shareAgain(_ pages: SharedPages) throws(HypervisorError) -> SharedPages {
        forget(pages)
        return try sharePages(count: pages.refs.count, with: pages.peer, writable: pages.writable)
    }
}
