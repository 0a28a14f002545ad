import XenABI

/// Frames of a domain's own memory, contiguous in that domain and in this process.
public struct GuestPages: Sendable, Hashable {
    /// The first frame; the run is `first ..< first + memory.count`.
    public let first: FrameNumber
    /// The same frames as mapped in this process, page `i` being frame `first + i`.
    public let memory: MappedPages

    /// Describes a run of frames; made by a ``PageAllocator`` implementation, which owns the memory until ``PageAllocator/freePages(_:)``.
    public init(first: FrameNumber, memory: MappedPages) {
        self.first = first
        self.memory = memory
    }

    /// The frame of page `index`.
    @inlinable public func frame(_ index: Int) -> FrameNumber {
        precondition(index >= 0 && index < memory.count, "page index out of range")
        return FrameNumber(first.rawValue + UInt64(index))
    }
}

/// The allocator of a domain's own pages (what a guest kernel's page allocator
/// gives it). Allocation is a set-up operation, never per request.
public protocol PageAllocator: AnyObject, Sendable {
    /// Allocates `count` zeroed, contiguous frames; `ENOMEM` when the domain
    /// has no run that long left.
    func allocatePages(_ count: Int) throws(HypervisorError) -> GuestPages
    /// Returns frames to the domain; refused while any of them is granted.
    func freePages(_ pages: GuestPages) throws(HypervisorError)
}
