import Glibc
import XenABI

/// blkback's bounce pages: private memory asked to be backed by transparent huge pages,
/// so pages next to each other are next to each other in physical memory too. A request
/// whose segments sit on adjacent bounce pages then reaches the disk as one
/// scatter-gather element instead of one per page, which decides 128 KiB throughput on
/// a virtio disk without indirect descriptors (see ``BlockQueue``). Where huge pages are
/// off, the pages are ordinary ones and only that advantage is lost.
final class BouncePool {
    let base: UnsafeMutableRawPointer
    private let mapping: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private static let hugePage = 2 << 20

    init(pages: Int) {
        let bytes = (pages * XenPage.size + Self.hugePage - 1) / Self.hugePage * Self.hugePage
        mappedBytes = bytes + Self.hugePage
        guard let raw = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            fatalError("blkback bounce pool: mmap of \(mappedBytes) bytes failed, errno \(errno)")
        }
        mapping = raw
        let aligned = (Int(bitPattern: raw) + Self.hugePage - 1) / Self.hugePage * Self.hugePage
        base = UnsafeMutableRawPointer(bitPattern: aligned)!
        _ = madvise(base, bytes, MADV_HUGEPAGE)  // advice only: ordinary pages where THP is off
    }

    deinit { munmap(mapping, mappedBytes) }
}
