import Glibc
import XenABI
import XenHypervisor

/// Private pages for a process in a real Xen domain: anonymous memory.
///
/// A user process cannot learn the guest frame numbers behind its memory,
/// so `GuestPages.first` here is the virtual page number, which names the
/// run but cannot be granted by frame; share memory with `GrantSharer`.
final class AnonymousPageAllocator: PageAllocator {
    func allocatePages(_ count: Int) throws(HypervisorError) -> GuestPages {
        guard count > 0 else { throw .errno(.invalidArgument, "allocate \(count) pages") }
        let p = mmap(nil, count * XenPage.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw .errno(.init(rawValue: Glibc.errno), "allocate \(count) pages") }
        return GuestPages(first: FrameNumber(UInt64(UInt(bitPattern: p)) >> UInt64(XenPage.shift)),
                          memory: MappedPages(base: p, count: count))
    }

    func freePages(_ pages: GuestPages) throws(HypervisorError) {
        guard munmap(pages.memory.base, pages.memory.byteCount) == 0 else {
            throw .errno(.init(rawValue: Glibc.errno), "free \(pages.memory.count) pages")
        }
    }
}
