import XenABI

/// A run of 4 KiB pages mapped contiguously in this process.
///
/// The memory belongs to whoever produced the value (a mapping, a share, an
/// allocation); the value only lends an address and must not be used after
/// that owner releases it.
@frozen
public struct MappedPages: @unchecked Sendable, Hashable {
    // @unchecked: a raw address is only a number; the owner of the memory
    // (grant mapper, sharer, allocator) decides which thread may touch it.
    /// The address of the first page, page-aligned.
    public let base: UnsafeMutableRawPointer
    /// The number of 4 KiB pages.
    public let count: Int

    /// Lends `count` pages at `base`; the caller keeps ownership of the memory.
    @inlinable public init(base: UnsafeMutableRawPointer, count: Int) {
        self.base = base
        self.count = count
    }

    /// Bytes covered.
    @inlinable public var byteCount: Int { count &* XenPage.size }

    /// The address of page `index`.
    @inlinable public func page(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < count, "page index out of range")
        return base + index &* XenPage.size
    }

    /// The whole run as a raw buffer.
    @inlinable public var buffer: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: byteCount)
    }
}
