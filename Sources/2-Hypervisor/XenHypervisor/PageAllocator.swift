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

/// Which pages of a fixed run are allocated, taken first fit: the bookkeeping the
/// simulator's allocator, a daemon client's slice of guest memory and its share pools
/// all keep (set-up paths only). Not thread-safe: the owner guards it with its lock.
package struct PageRuns: Sendable {
    private var used: [Bool]

    /// `count` pages, none allocated.
    package init(count: Int) { used = Array(repeating: false, count: count) }

    /// Marks the first run of `count` free pages allocated and returns the index of its
    /// first page; nil when no free run is that long.
    package mutating func take(_ count: Int) -> Int? {
        var run = 0
        for i in used.indices {
            run = used[i] ? 0 : run + 1
            if run == count {
                let start = i - count + 1
                for j in start...i { used[j] = true }
                return start
            }
        }
        return nil
    }

    /// True when every page in `range` is allocated.
    package func allTaken(_ range: Range<Int>) -> Bool { range.allSatisfy { used[$0] } }

    /// Marks the pages in `range` free.
    package mutating func release(_ range: Range<Int>) { for i in range { used[i] = false } }

    /// Pages allocated.
    package var takenCount: Int { used.count { $0 } }
}
