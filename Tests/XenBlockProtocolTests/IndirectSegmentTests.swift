import CXen
import Testing
import XenABI
@testable import XenBlockProtocol

/// The segment list of an indirect request is copied out of its pages once and checked.
@Suite(.timeLimit(.minutes(5)))
struct IndirectSegmentTests {
    /// Pages as a frontend fills them, plus the request that names them.
    func make(_ segs: [BlockSegment], sector: UInt64 = 0, limits: BlockDeviceLimits = .init(sectors: 1 << 30, maxIndirectSegments: 4096))
        throws -> (BlockRequest, UnsafeMutableRawPointer, BlockDeviceLimits)
    {
        let pages = IndirectRequest.pagesNeeded(forSegments: segs.count)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: max(pages, 1) * 4096, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0xEE, count: max(pages, 1) * 4096)
        segs.withUnsafeBufferPointer { b in
            for p in 0..<pages { IndirectRequest.writeSegments(b, toPage: p, at: memory + p * 4096) }
        }
        let r = BlockRequest(id: 99, operation: .indirect(IndirectRequest(
            operation: .read, sector: sector, segmentCount: segs.count, pages: (0..<pages).map { GrantRef(UInt32(500 + $0)) })))
        let decoded = try BlockRequest(validating: r.encoded(), limits: limits)
        return (decoded, memory, limits)
    }

    func copy(_ r: BlockRequest, _ memory: UnsafeMutableRawPointer, _ limits: BlockDeviceLimits) -> Result<([BlockSegment], UInt64), BlockRequestError> {
        guard case .indirect(let ind) = r.operation else { fatalError() }
        var out = [BlockSegment](repeating: BlockSegment(gref: GrantRef(0), firstSector: 0, lastSector: 0), count: ind.segmentCount)
        let total = out.withUnsafeMutableBufferPointer { buf in
            Result { () throws(BlockRequestError) in
                try r.copyIndirectSegments(limits: limits, page: { UnsafeRawPointer(memory + $0 * 4096) }, into: buf)
            }
        }
        return total.map { (out, $0) }
    }

    @Test func manyPagesRoundTrip() throws {
        let segs = (0..<1500).map { BlockSegment(gref: GrantRef(UInt32($0 + 7)), firstSector: UInt8($0 % 8), lastSector: 7) }
        let (r, memory, limits) = try make(segs, sector: 1000)
        defer { memory.deallocate() }
        let (out, total) = try copy(r, memory, limits).get()
        #expect(out == segs)
        #expect(total == segs.reduce(0) { $0 + UInt64($1.sectorCount) })
    }

    @Test func badSegmentInALaterPage() throws {
        var segs = (0..<600).map { BlockSegment(gref: GrantRef(UInt32($0)), firstSector: 0, lastSector: 7) }
        segs[555].lastSector = 8
        let (r, memory, limits) = try make(segs)
        defer { memory.deallocate() }
        let e = try #require(copy(r, memory, limits).failure)
        #expect(e.code == .badSegment && e.id == 99 && e.operation == .indirect && e.message.contains("segment 555"))
        segs[555] = BlockSegment(gref: GrantRef(1), firstSector: 6, lastSector: 5)
        let (r2, m2, _) = try make(segs)
        defer { m2.deallocate() }
        #expect(copy(r2, m2, limits).failure?.code == .badSegment)
    }

    @Test func totalRangeCheckedAfterTheSegments() throws {
        let limits = BlockDeviceLimits(sectors: 1024, maxIndirectSegments: 4096)
        let segs = (0..<200).map { BlockSegment(gref: GrantRef(UInt32($0)), firstSector: 0, lastSector: 7) }  // 1600 sectors
        let (r, memory, _) = try make(segs, sector: 0, limits: limits)
        defer { memory.deallocate() }
        #expect(copy(r, memory, limits).failure?.code == .outOfRange)
        let (r2, m2, _) = try make(Array(segs.prefix(128)), sector: 0, limits: limits)  // exactly 1024
        defer { m2.deallocate() }
        #expect(copy(r2, m2, limits).failure == nil)
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let f) = self { f } else { nil }
    }
}
