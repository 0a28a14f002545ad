import CBlkifABI
import CXen
import Testing
import XenABI
@testable import XenBlockProtocol

/// Hostile slots get typed errors (never a trap), with the status Linux blkback would send.
@Suite(.timeLimit(.minutes(5)))
struct ValidationTests {
    func code(_ slot: CSlot, _ abi: BlkifABI = .native, _ limits: BlockDeviceLimits = disk) -> BlockRequestError.Code? {
        slot.refusal(abi, limits)?.code
    }

    @Test(arguments: BlkifABI.allCases)
    func segmentCounts(abi: BlkifABI) {
        let full = (0..<11).map { (UInt32($0), UInt8(0), UInt8(7)) }
        for n: UInt8 in [0, 12, 255] {
            let e = CSlot.rw(abi, op: 0, nseg: n, id: 1, sector: 0, segs: full).refusal(abi, disk)
            #expect(e?.code == .badSegmentCount, "nr_segments \(n)")
            #expect(e?.status == .error && e?.id == 1 && e?.operation == .read)
        }
        for n: UInt8 in [1, 11] {
            #expect(code(.rw(abi, op: 1, nseg: n, id: 1, sector: 0, segs: full), abi) == nil, "nr_segments \(n)")
        }
    }

    @Test(arguments: BlkifABI.allCases)
    func segmentSectors(abi: BlkifABI) {
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 3, 2)]), abi) == .badSegment)  // first > last
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 8)]), abi) == .badSegment)  // last_sect 8
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 255, 255)]), abi) == .badSegment)
        #expect(code(.rw(abi, op: 0, nseg: 2, id: 1, sector: 0, segs: [(1, 0, 7), (2, 7, 6)]), abi) == .badSegment)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 7, 7)]), abi) == nil)
        // With 4 KiB sectors a page holds one sector: last_sect must be 0.
        let big = BlockDeviceLimits(sectors: 100, sectorSize: 4096)
        #expect(big.sectorsPerPage == 1)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 1)]), abi, big) == .badSegment)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 99, segs: [(1, 0, 0)]), abi, big) == nil)
    }

    @Test(arguments: BlkifABI.allCases)
    func sectorRanges(abi: BlkifABI) {
        let small = BlockDeviceLimits(sectors: 64, discard: true)
        let page = [(UInt32(1), UInt8(0), UInt8(7))]
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 56, segs: page), abi, small) == nil)  // ends exactly at the end
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 57, segs: page), abi, small) == .outOfRange)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 64, segs: [(1, 0, 0)]), abi, small) == .outOfRange)
        // sector + count wraps around 2^64: must not pass as "small".
        for s: UInt64 in [.max, .max - 3, .max - 7, 1 << 63] {
            #expect(code(.rw(abi, op: 1, nseg: 1, id: 1, sector: s, segs: page), abi, small) == .outOfRange, "sector \(s)")
            #expect(code(.discard(abi, id: 1, sector: s, count: 8), abi, small) == .outOfRange)
            #expect(code(.indirect(abi, op: 0, nseg: 1, id: 1, sector: s, grefs: [1]), abi, disk) == .outOfRange)
        }
        let huge = BlockDeviceLimits(sectors: .max)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: .max - 8, segs: page), abi, huge) == nil)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: .max - 7, segs: page), abi, huge) == .outOfRange)
    }

    @Test(arguments: BlkifABI.allCases)
    func operations(abi: BlkifABI) {
        for op: UInt8 in [4, 7, 8, 100, 255] {
            let e = CSlot.rw(abi, op: op, nseg: 1, id: 5, sector: 0, segs: [(1, 0, 0)]).refusal(abi, disk)
            #expect(e?.code == .unknownOperation && e?.status == .notSupported, "op \(op)")
        }
        let none = BlockDeviceLimits(sectors: 1 << 20)  // blkif.h: absent feature nodes mean 0
        #expect(code(.rw(abi, op: 3, nseg: 0, id: 1, sector: 0, segs: []), abi, none) == .unsupportedOperation)
        #expect(code(.rw(abi, op: 2, nseg: 0, id: 1, sector: 0, segs: []), abi, none) == .unsupportedOperation)
        #expect(code(.discard(abi, id: 1, sector: 0, count: 8), abi, none) == .unsupportedOperation)
        #expect(code(.indirect(abi, op: 0, nseg: 1, id: 1, sector: 0, grefs: [1]), abi, none) == .unsupportedOperation)
        #expect(code(.discard(abi, flag: cblkif_discard_secure, id: 1, sector: 0, count: 8), abi, disk) == .unsupportedOperation)
    }

    @Test(arguments: BlkifABI.allCases)
    func flushCarriesNoSegments(abi: BlkifABI) throws {
        let f = try CSlot.rw(abi, op: 3, nseg: 0, id: 8, sector: 0, segs: []).decode(abi, disk)
        #expect(f.operation == .flush(sector: 0, segments: []))
        #expect(code(.rw(abi, op: 3, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 7)]), abi) == .badSegmentCount)
        #expect(code(.rw(abi, op: 2, nseg: 2, id: 1, sector: 0, segs: [(1, 0, 7), (2, 0, 7)]), abi) == .badSegmentCount)
        // The Linux-interop switch: a flush with data is a write then a flush, checked like one.
        var linux = disk
        linux.acceptsDataOnFlush = true
        let w = try CSlot.rw(abi, op: 3, nseg: 1, id: 8, sector: 16, segs: [(1, 0, 7)]).decode(abi, linux)
        #expect(w.operation == .flush(sector: 16, segments: segments([(1, 0, 7)])))
        #expect(code(.rw(abi, op: 3, nseg: 12, id: 1, sector: 0, segs: []), abi, linux) == .badSegmentCount)
        #expect(code(.rw(abi, op: 3, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 8)]), abi, linux) == .badSegment)
        linux.readOnly = true
        #expect(code(.rw(abi, op: 3, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 7)]), abi, linux) == .readOnly)
    }

    @Test(arguments: BlkifABI.allCases)
    func readOnlyDevice(abi: BlkifABI) {
        let ro = BlockDeviceLimits(sectors: 1 << 20, readOnly: true, flush: true, barrier: true, discard: true, maxIndirectSegments: 32)
        #expect(code(.rw(abi, op: 1, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 7)]), abi, ro) == .readOnly)
        #expect(code(.discard(abi, id: 1, sector: 0, count: 8), abi, ro) == .readOnly)
        #expect(code(.indirect(abi, op: 1, nseg: 1, id: 1, sector: 0, grefs: [1]), abi, ro) == .readOnly)
        #expect(code(.rw(abi, op: 0, nseg: 1, id: 1, sector: 0, segs: [(1, 0, 7)]), abi, ro) == nil)
        #expect(code(.indirect(abi, op: 0, nseg: 1, id: 1, sector: 0, grefs: [1]), abi, ro) == nil)
        #expect(code(.rw(abi, op: 3, nseg: 0, id: 1, sector: 0, segs: []), abi, ro) == nil)  // flushing is harmless
    }

    @Test(arguments: BlkifABI.allCases)
    func discardRanges(abi: BlkifABI) {
        let small = BlockDeviceLimits(sectors: 1000, discard: true)
        #expect(code(.discard(abi, id: 1, sector: 0, count: 1000), abi, small) == nil)
        #expect(code(.discard(abi, id: 1, sector: 999, count: 1), abi, small) == nil)
        #expect(code(.discard(abi, id: 1, sector: 999, count: 2), abi, small) == .outOfRange)
        #expect(code(.discard(abi, id: 1, sector: 1, count: .max), abi, small) == .outOfRange)
        #expect(code(.discard(abi, id: 1, sector: 1001, count: 0), abi, small) == .outOfRange)
    }

    @Test(arguments: BlkifABI.allCases)
    func indirectLimits(abi: BlkifABI) {
        let l = BlockDeviceLimits(sectors: 1 << 20, maxIndirectSegments: 256)
        #expect(code(.indirect(abi, op: 0, nseg: 256, id: 1, sector: 0, grefs: [1]), abi, l) == nil)
        #expect(code(.indirect(abi, op: 0, nseg: 257, id: 1, sector: 0, grefs: [1]), abi, l) == .badSegmentCount)
        #expect(code(.indirect(abi, op: 0, nseg: 0, id: 1, sector: 0, grefs: [1]), abi, l) == .badSegmentCount)
        #expect(code(.indirect(abi, op: 0, nseg: .max, id: 1, sector: 0, grefs: [1]), abi, l) == .badSegmentCount)
        for inner: UInt8 in [2, 3, 5, 6, 200] {
            #expect(code(.indirect(abi, op: inner, nseg: 1, id: 1, sector: 0, grefs: [1]), abi, l) == .badIndirectOperation)
        }
    }
}
