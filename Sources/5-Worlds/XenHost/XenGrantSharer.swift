import Glibc
import Synchronization
import XenABI
import XenHypervisor

/// `GrantSharer` on `xengntshr` (the gntalloc device).
final class XenGrantSharer: GrantSharer {
    private let lib: LibXen
    // The libxen handle is an fd wrapper whose calls are single ioctls, safe
    // from any thread; it is only released once, by close().
    nonisolated(unsafe) private let handle: LibXen.Handle
    private let closed = Atomic<Bool>(false)

    init(_ lib: LibXen) throws(HypervisorError) {
        guard let handle = lib.gntshrOpen() else { throw .libxen(lib, "xengntshr_open") }
        self.lib = lib
        self.handle = handle
    }

    deinit { close() }

    func sharePages(count: Int, with peer: DomainID, writable: Bool) throws(HypervisorError) -> SharedPages {
        if closed.load(ordering: .acquiring) { throw HypervisorError(.closed, "grant sharer") }
        guard count > 0, count <= Int(Int32.max) else { throw .errno(.invalidArgument, "share of \(count) pages") }
        var refs = [UInt32](repeating: 0, count: count)
        let address = lib.gntshrSharePages(handle, UInt32(peer.rawValue), Int32(count), &refs, writable ? 1 : 0)
        guard let address else { throw .libxen(lib, "xengntshr_share_pages(\(count) to \(peer))") }
        return SharedPages(peer: peer, refs: refs.map { GrantRef($0) }, writable: writable,
                           memory: MappedPages(base: address, count: count))
    }

    /// gntalloc revokes a grant the peer still maps only when the peer lets
    /// go; the library reports nothing then, so `.busy` is never returned here.
    func unshare(_ pages: SharedPages) throws(HypervisorError) {
        if closed.load(ordering: .acquiring) { throw HypervisorError(.closed, "grant sharer") }
        guard lib.gntshrUnshare(handle, pages.memory.base, UInt32(pages.memory.count)) == 0 else {
            throw .libxen(lib, "xengntshr_unshare(\(pages.memory.count) pages)")
        }
    }

    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = lib.gntshrClose(handle)
    }
}
