import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// A run of 4 KiB pages in a memfd, mapped once into this process.
///
/// Backing memory by a file rather than by anonymous memory is what lets a
/// frame be mapped a second time at another address (a grant map is such a
/// second view, not a copy) and, later, lets another process map it by
/// receiving the descriptor.
final class SharedMemory: @unchecked Sendable {
    // @unchecked: the descriptor and the primary mapping are immutable after
    // init; what is written through them is the users' business (guest memory).
    let fd: Int32
    let pageCount: Int
    let base: UnsafeMutableRawPointer
    let name: String

    init(name: String, pages: Int) throws(HypervisorError) {
        self.name = name
        precondition(pages > 0, "shared memory needs at least one page")
        let fd = cxen_memfd_create(name, 1)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "memfd_create \(name)") }
        // Sealed at its size: across processes the domain's own process holds
        // this descriptor, and a file it could shrink would make the hypervisor
        // fault (SIGBUS) on its next read of a grant entry.
        let sealShrink: Int32 = 0x0002, sealGrow: Int32 = 0x0004, sealSeal: Int32 = 0x0001, addSeals: Int32 = 1033
        guard ftruncate(fd, off_t(pages * XenPage.size)) == 0, fcntl(fd, addSeals, sealShrink | sealGrow | sealSeal) == 0 else {
            let err = Errno(rawValue: errno)
            close(fd)
            throw .errno(err, "sizing and sealing \(name) at \(pages) pages")
        }
        let p = mmap(nil, pages * XenPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let err = Errno(rawValue: errno)
            close(fd)
            throw .errno(err, "mmap \(name)")
        }
        self.fd = fd
        self.pageCount = pages
        self.base = p
    }

    deinit {
        munmap(base, pageCount * XenPage.size)
        close(fd)
    }

    /// The primary address of page `index`.
    func page(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < pageCount, "page index out of range")
        return base + index * XenPage.size
    }
}

/// Second views of frames of one or more memfds, contiguous in this process:
/// what a grant map produces. Unmapping is `munmap` of the whole run.
enum ForeignView {
    /// Maps `frames` of `memory` contiguously, each with `writable` protection.
    /// The kernel keeps the memfd alive while the view exists, even if its
    /// owner closes it: a granter's death never pulls pages from under a mapper.
    static func map(_ memory: SharedMemory, frames: UnsafeBufferPointer<UInt64>, writable: Bool)
        throws(HypervisorError) -> UnsafeMutableRawPointer
    {
        let length = frames.count * XenPage.size
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        // Reserve the whole run first so the pages land next to each other.
        guard let region = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            region != MAP_FAILED
        else { throw .errno(Errno(rawValue: errno), "reserving \(frames.count) pages for a grant map") }
        for (i, frame) in frames.enumerated() {
            let at = region + i * XenPage.size
            let p = mmap(at, XenPage.size, prot, MAP_SHARED | MAP_FIXED, memory.fd, off_t(frame) * off_t(XenPage.size))
            if p == nil || p == MAP_FAILED {
                let err = Errno(rawValue: errno)
                munmap(region, length)
                throw .errno(err, "mmap of a granted frame")
            }
        }
        return region
    }

    /// Puts private zero pages where the view was: the frames are no longer reachable
    /// through it, yet a holder that still touches it does not fault. The holder's
    /// unmap of it fails (its record is gone), so the region stays until the process ends.
    static func detach(_ base: UnsafeMutableRawPointer, pages: Int) {
        let p = mmap(base, pages * XenPage.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        precondition(p == base, "replacing a grant view failed: \(errno)")
    }

    static func unmap(_ base: UnsafeMutableRawPointer, pages: Int) {
        let rc = munmap(base, pages * XenPage.size)
        precondition(rc == 0, "munmap of a grant view failed: \(errno)")
    }
}
