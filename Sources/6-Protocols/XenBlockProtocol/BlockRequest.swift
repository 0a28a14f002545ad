import CXen
import XenABI

/// One data segment (`struct blkif_request_segment`): sectors `firstSector...lastSector`
/// of the granted page `gref`.
@frozen
public struct BlockSegment: Hashable, Sendable {
    /// `gref`: the grant of the page that holds (or receives) the data.
    public var gref: GrantRef
    /// `first_sect`: first sector in the page to transfer (inclusive).
    public var firstSector: UInt8
    /// `last_sect`: last sector in the page to transfer (inclusive).
    public var lastSector: UInt8

    /// A segment of sectors `firstSector...lastSector` of the page `gref` grants; not validated here.
    @inlinable public init(gref: GrantRef, firstSector: UInt8, lastSector: UInt8) {
        self.gref = gref
        self.firstSector = firstSector
        self.lastSector = lastSector
    }

    /// Sectors this segment moves; meaningful once validated (`first <= last`).
    @inlinable public var sectorCount: Int { Int(lastSector) - Int(firstSector) + 1 }

    /// Byte offset and length inside the page for a sector size.
    @inlinable public func byteRange(sectorSize: Int) -> Range<Int> {
        Int(firstSector) * sectorSize..<(Int(lastSector) + 1) * sectorSize
    }
}

/// Up to `BLKIF_MAX_SEGMENTS_PER_REQUEST` segments stored inline: no heap allocation.
public struct BlockSegments: RandomAccessCollection, Hashable, Sendable, ExpressibleByArrayLiteral {
    @usableFromInline var storage: InlineArray<11, BlockSegment>
    @usableFromInline var length: Int

    /// Capacity: `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
    public static var capacity: Int { 11 }

    /// An empty list.
    public init() {
        storage = InlineArray(repeating: BlockSegment(gref: GrantRef(0), firstSector: 0, lastSector: 0))
        length = 0
    }

    /// A list of the given segments; traps past ``capacity``.
    public init(arrayLiteral elements: BlockSegment...) {
        self.init()
        for e in elements { append(e) }
    }

    /// Appends a segment; traps past the capacity (a caller bug, never peer input).
    @inlinable public mutating func append(_ segment: BlockSegment) {
        precondition(length < Self.capacity, "more than BLKIF_MAX_SEGMENTS_PER_REQUEST segments")
        storage[length] = segment
        length += 1
    }

    /// Always 0.
    @inlinable public var startIndex: Int { 0 }
    /// The number of segments.
    @inlinable public var endIndex: Int { length }
    /// The segment at `i`; traps outside `0..<count`.
    @inlinable public subscript(i: Int) -> BlockSegment {
        precondition(i >= 0 && i < length, "segment index out of range")
        return storage[i]
    }

    /// Equal when both hold the same segments in the same order (unused capacity is ignored).
    public static func == (a: Self, b: Self) -> Bool { a.elementsEqual(b) }
    /// Hashes the segments in use, consistent with `==`.
    public func hash(into h: inout Hasher) {
        h.combine(length)
        for s in self { h.combine(s) }
    }

    /// Total sectors of all segments (each at most a page, so this never overflows).
    /// An index loop, not `reduce`: unspecialised generic iteration allocates in debug builds.
    @inlinable public var sectorCount: UInt64 {
        var total: UInt64 = 0
        for i in 0..<length { total += UInt64(storage[i].sectorCount) }
        return total
    }
}

/// A `BLKIF_OP_INDIRECT` request: the segment list lives in granted pages.
public struct IndirectRequest: Hashable, Sendable {
    /// `indirect_op`: only read or write (Linux blkback refuses anything else).
    public var operation: BlkifOperation
    /// `sector_number`: the first sector.
    public var sector: UInt64
    /// `nr_segments`: how many `blkif_request_segment`s the pages hold, 1...`feature-max-indirect-segments`.
    public var segmentCount: Int
    @usableFromInline var grefStorage: InlineArray<8, GrantRef>

    /// The request's data operation direction.
    public var isWrite: Bool { operation == .write }

    /// A request a frontend builds: `pages` grants the pages holding the segment list, exactly ``pagesNeeded(forSegments:)`` of them. Traps (a caller bug) unless `segmentCount` is within 1...4096 and the page count matches.
    public init(operation: BlkifOperation, sector: UInt64, segmentCount: Int, pages: [GrantRef]) {
        precondition((1...BlockDeviceLimits.maxIndirectSegmentsLimit).contains(segmentCount), "1...4096 indirect segments")
        precondition(pages.count == Self.pagesNeeded(forSegments: segmentCount), "one page per 512 segments")
        self.operation = operation
        self.sector = sector
        self.segmentCount = segmentCount
        grefStorage = InlineArray(repeating: GrantRef(0))
        for (i, g) in pages.enumerated() { grefStorage[i] = g }
    }

    @usableFromInline init(operation: BlkifOperation, sector: UInt64, segmentCount: Int, grefs: InlineArray<8, GrantRef>) {
        self.operation = operation
        self.sector = sector
        self.segmentCount = segmentCount
        self.grefStorage = grefs
    }

    /// `ceil(nr_segments / segments-per-page)`: how many `indirect_grefs` are in use.
    @inlinable public static func pagesNeeded(forSegments n: Int) -> Int {
        (n + BlockDeviceLimits.segmentsPerIndirectPage - 1) / BlockDeviceLimits.segmentsPerIndirectPage
    }

    /// How many of ``page(_:)`` are meaningful.
    @inlinable public var pageCount: Int { Self.pagesNeeded(forSegments: segmentCount) }

    /// `indirect_grefs[i]`: the grant of the i-th page of segments.
    @inlinable public func page(_ i: Int) -> GrantRef {
        precondition(i >= 0 && i < pageCount, "indirect page index out of range")
        return grefStorage[i]
    }

    /// Equal when operation, sector, segment count and the pages in use match (unused `indirect_grefs` are ignored).
    public static func == (a: Self, b: Self) -> Bool {
        a.operation == b.operation && a.sector == b.sector && a.segmentCount == b.segmentCount
            && (0..<a.pageCount).allSatisfy { a.grefStorage[$0] == b.grefStorage[$0] }
    }
    /// Hashes the fields `==` compares.
    public func hash(into h: inout Hasher) {
        h.combine(operation)
        h.combine(sector)
        h.combine(segmentCount)
        for i in 0..<pageCount { h.combine(grefStorage[i]) }
    }
}

/// One blkif request as a Swift value: decoded from a private copy of a ring slot and
/// validated (see ``init(validating:abi:limits:)``), or built by a frontend and encoded.
public struct BlockRequest: Hashable, Sendable {
    /// What the request asks for.
    public enum Operation: Hashable, Sendable {
        /// `BLKIF_OP_READ` of 1...11 segments starting at `sector`.
        case read(sector: UInt64, segments: BlockSegments)
        /// `BLKIF_OP_WRITE` of 1...11 segments starting at `sector`.
        case write(sector: UInt64, segments: BlockSegments)
        /// `BLKIF_OP_FLUSH_DISKCACHE`. `segments` is empty unless the device
        /// ``BlockDeviceLimits/acceptsDataOnFlush`` (then: write them, then flush).
        case flush(sector: UInt64, segments: BlockSegments)
        /// `BLKIF_OP_WRITE_BARRIER`; `segments` as for ``flush(sector:segments:)``.
        case writeBarrier(sector: UInt64, segments: BlockSegments)
        /// `BLKIF_OP_DISCARD` of `count` sectors; `secure` is `BLKIF_DISCARD_SECURE`.
        case discard(sector: UInt64, count: UInt64, secure: Bool)
        /// `BLKIF_OP_INDIRECT`; its segments are read with ``BlockRequest/copyIndirectSegments(limits:page:into:)``.
        case indirect(IndirectRequest)
    }

    /// `id`: the frontend's private value, echoed in the response.
    public var id: UInt64
    /// `handle`: the virtual device (only meaningful for read/write).
    public var handle: UInt16
    /// What the request asks for, with the fields that operation carries.
    public var operation: Operation

    /// A request a frontend builds; `handle` defaults to 0. Nothing is validated here; a backend validates what it decodes.
    public init(id: UInt64, handle: UInt16 = 0, operation: Operation) {
        self.id = id
        self.handle = handle
        self.operation = operation
    }

    /// The operation byte this request carries on the wire.
    public var code: BlkifOperation {
        switch operation {
        case .read: .read
        case .write: .write
        case .flush: .flushDiskCache
        case .writeBarrier: .writeBarrier
        case .discard: .discard
        case .indirect: .indirect
        }
    }

    /// The response for this request with `status`.
    @inlinable public func response(_ status: BlkifStatus) -> BlockResponse {
        BlockResponse(id: id, operation: code, status: status)
    }
}
