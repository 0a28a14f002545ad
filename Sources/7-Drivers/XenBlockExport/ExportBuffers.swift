import XenLocks

/// Memory that moves from the reader thread to a request's task to the thread that sends
/// its reply; exactly one of them owns it at a time, and the last gives it back.
struct OwnedBuffer: @unchecked Sendable {
    // @unchecked: ownership is handed over, never shared (see above).
    /// The whole allocation: a size class of ``ExportBuffers`` or exactly what was asked.
    fileprivate let base: UnsafeMutableRawBufferPointer
    /// The `count` bytes asked for (the allocation has at least one, for a count of zero).
    let bytes: UnsafeMutableRawBufferPointer

    fileprivate init(base: UnsafeMutableRawBufferPointer, count: Int) {
        self.base = base
        bytes = UnsafeMutableRawBufferPointer(rebasing: base[0..<count])
    }

    fileprivate static func allocate(capacity: Int, count: Int) -> OwnedBuffer {
        OwnedBuffer(base: .allocate(byteCount: max(capacity, 1), alignment: 4096), count: count)
    }

    /// Zeros, for ever (never given back).
    static func zeros(_ count: Int) -> OwnedBuffer {
        let b = allocate(capacity: count, count: count)
        b.base.initializeMemory(as: UInt8.self, repeating: 0)
        return b
    }
}

/// A connection's request buffers (a read's data, a write's payload), kept for the next
/// request instead of freed. A buffer is taken on one thread and given back on another,
/// and glibc answers that pattern with page-aligned chunks trimmed off the heap and
/// faulted in again: at queue depth 32, blkfront's queue thread page-faulted in its copy
/// into each fresh read buffer, and `malloc`, `free` and heap consolidation took about
/// 5 % of the export's samples (`perf record -g` of `xenpv guest disk serve`).
///
/// Sizes are rounded up to a power of two from 4 KiB to 128 KiB, with a few buffers kept
/// per size (at most 1 MiB of each, 4.75 MiB in all); larger requests are rare and
/// allocated each time.
final class ExportBuffers: Sendable {
    static let smallest = 4096
    static let largest = 128 << 10
    private static let classes = 6  // 4, 8, 16, 32, 64, 128 KiB
    private static let bytesPerClass = 1 << 20

    private let kept = Locked([[UnsafeMutableRawBufferPointer]](repeating: [], count: classes))

    /// The size class of an allocation of `capacity` bytes, if it is one.
    private static func sizeClass(capacity: Int) -> Int? {
        guard capacity >= smallest, capacity <= largest, capacity & (capacity - 1) == 0 else { return nil }
        return capacity.trailingZeroBitCount - smallest.trailingZeroBitCount
    }

    /// A page-aligned buffer of `count` bytes.
    func take(_ count: Int) -> OwnedBuffer {
        guard count <= Self.largest else { return .allocate(capacity: count, count: count) }
        let capacity = max(Self.smallest, 1 << (Int.bitWidth - (count - 1).leadingZeroBitCount))
        let c = Self.sizeClass(capacity: capacity)!
        if let base = kept.withLock({ $0[c].popLast() }) { return OwnedBuffer(base: base, count: count) }
        return .allocate(capacity: capacity, count: count)
    }

    /// Gives `buffer` back: kept for a later ``take(_:)`` while its size has room, else freed.
    func give(_ buffer: OwnedBuffer) {
        if let c = Self.sizeClass(capacity: buffer.base.count) {
            let keep = Self.bytesPerClass / buffer.base.count
            let kept = kept.withLock { k -> Bool in
                guard k[c].count < keep else { return false }
                k[c].append(buffer.base)
                return true
            }
            if kept { return }
        }
        buffer.base.deallocate()
    }

    /// Buffers kept now, for tests.
    var keptCount: Int { kept.withLock { $0.reduce(0) { $0 + $1.count } } }

    deinit {
        kept.withLock { k in
            for list in k { for base in list { base.deallocate() } }
            k = []
        }
    }
}
