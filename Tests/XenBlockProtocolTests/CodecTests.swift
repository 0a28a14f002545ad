import CBlkifABI
import CBlkifProbe
import CXen
import Testing
import XenABI
@testable import XenBlockProtocol

/// Slots written by C decode to the right Swift values, in both ABIs, and Swift's
/// encoding reads back through C's field names.
@Suite(.timeLimit(.minutes(5)))
struct CodecTests {
    @Test(arguments: BlkifABI.allCases)
    func readWriteFromC(abi: BlkifABI) throws {
        let segs: [(UInt32, UInt8, UInt8)] = [(9, 0, 7), (10, 2, 5), (0xFFFF_FFF0, 7, 7)]
        let slot = CSlot.rw(abi, op: 1, nseg: 3, handle: 0x1234, id: 0xDEAD_BEEF_CAFE_F00D, sector: 0x0F_0000, segs: segs)
        let r = try slot.decode(abi, disk)
        #expect(r.id == 0xDEAD_BEEF_CAFE_F00D)
        #expect(r.handle == 0x1234)
        #expect(r.operation == .write(sector: 0x0F_0000, segments: segments(segs)))
        #expect(r.code == .write)
        guard case .write(_, let s) = r.operation else { return }
        #expect(s.sectorCount == 8 + 4 + 1)
        #expect(s[1].byteRange(sectorSize: 512) == 1024..<3072)
    }

    @Test(arguments: BlkifABI.allCases)
    func discardAndIndirectFromC(abi: BlkifABI) throws {
        let limits = BlockDeviceLimits(sectors: 1 << 20, discard: true, secureDiscard: true, maxIndirectSegments: 1024)
        let d = try CSlot.discard(abi, flag: cblkif_discard_secure, handle: 7, id: 42, sector: 100, count: 900).decode(abi, limits)
        #expect(d == BlockRequest(id: 42, handle: 7, operation: .discard(sector: 100, count: 900, secure: true)))

        let grefs: [UInt32] = [11, 22, 33]
        let i = try CSlot.indirect(abi, op: 0, nseg: 1025 - 1, handle: 5, id: 77, sector: 4096, grefs: grefs).decode(abi, limits)
        guard case .indirect(let ind) = i.operation else { Issue.record("not indirect"); return }
        #expect(i.id == 77 && i.handle == 5)
        #expect(ind.operation == .read && ind.sector == 4096 && ind.segmentCount == 1024)
        #expect(ind.pageCount == 2)
        #expect(ind.page(0) == GrantRef(11) && ind.page(1) == GrantRef(22))
    }

    @Test(arguments: BlkifABI.allCases)
    func swiftEncodingRoundTrips(abi: BlkifABI) throws {
        let limits = BlockDeviceLimits(sectors: 1 << 30, flush: true, barrier: true, discard: true, secureDiscard: true, maxIndirectSegments: 4096)
        let requests: [BlockRequest] = [
            BlockRequest(id: 1, handle: 3, operation: .read(sector: 8, segments: segments([(1, 0, 7)]))),
            BlockRequest(id: .max, handle: .max, operation: .write(sector: (1 << 30) - 88,
                segments: segments((0..<11).map { (UInt32($0 + 100), 0, 7) }))),
            BlockRequest(id: 3, operation: .flush(sector: 0, segments: [])),
            BlockRequest(id: 4, operation: .writeBarrier(sector: 0, segments: [])),
            BlockRequest(id: 5, operation: .discard(sector: 1 << 29, count: 1 << 29, secure: false)),
            BlockRequest(id: 6, operation: .discard(sector: 0, count: 1, secure: true)),
            BlockRequest(id: 7, handle: 9, operation: .indirect(IndirectRequest(
                operation: .write, sector: 0, segmentCount: 4096, pages: (0..<8).map { GrantRef(UInt32(1000 + $0)) }))),
        ]
        for r in requests {
            var slot = [UInt8](repeating: 0xAA, count: 112)
            slot.withUnsafeMutableBytes { r.write(toSlot: $0.baseAddress!, abi: abi) }
            let decoded = try slot.withUnsafeBytes { raw in
                Result { () throws(BlockRequestError) in try BlockRequest(copyingSlotAt: raw.baseAddress!, abi: abi, limits: limits) }
            }.get()
            #expect(decoded == r)
            // The whole request slot was written: nothing of the 0xAA fill survives in it.
            #expect(!slot.prefix(abi.requestSize).contains(0xAA))
            #expect(slot.dropFirst(abi.requestSize).allSatisfy { $0 == 0xAA })
        }
    }

    @Test func nativeEncodingReadsBackThroughC() {
        let segs: [(UInt32, UInt8, UInt8)] = [(77, 1, 6), (78, 0, 0)]
        let r = BlockRequest(id: 0x0102_0304_0506_0708, handle: 0xBEEF, operation: .read(sector: 12345, segments: segments(segs)))
        var v = r.encoded()
        var op: UInt8 = 0, n: UInt8 = 0, handle: UInt16 = 0, id: UInt64 = 0, sector: UInt64 = 0
        var g = [UInt32](repeating: 0, count: 11), f = [UInt8](repeating: 0, count: 11), l = [UInt8](repeating: 0, count: 11)
        withUnsafeBytes(of: &v) { cblkif_probe_read_rw($0.baseAddress, &op, &n, &handle, &id, &sector, &g, &f, &l) }
        #expect((op, n, handle, id, sector) == (0, 2, 0xBEEF, 0x0102_0304_0506_0708, 12345))
        #expect(g[0] == 77 && f[0] == 1 && l[0] == 6 && g[1] == 78 && f[1] == 0 && l[1] == 0)
        #expect(g[2...].allSatisfy { $0 == 0 } && l[2...].allSatisfy { $0 == 0 })
        // The Swift value is the C struct: fields read directly agree.
        #expect(v.sector_number == 12345 && v.seg.0.gref == 77 && v.nr_segments == 2)
    }

    @Test func x86_32DecodesToTheSameValueAsNative() throws {
        let segs: [(UInt32, UInt8, UInt8)] = [(5, 0, 3), (6, 4, 7)]
        let a = try CSlot.rw(.x86_32, op: 0, nseg: 2, handle: 1, id: 0xAABB_CCDD_0011_2233, sector: 777, segs: segs).decode(.x86_32, disk)
        let b = try CSlot.rw(.x86_64, op: 0, nseg: 2, handle: 1, id: 0xAABB_CCDD_0011_2233, sector: 777, segs: segs).decode(.x86_64, disk)
        #expect(a == b)
        // Read with the wrong ABI, the same bytes mean something else: the choice matters.
        let wrong = CSlot.rw(.x86_32, op: 0, nseg: 2, handle: 1, id: 0xAABB_CCDD_0011_2233, sector: 777, segs: segs)
        #expect((try? wrong.decode(.x86_64, disk)) != a)
    }

    @Test(arguments: BlkifABI.allCases)
    func responsesZeroTheirPadding(abi: BlkifABI) {
        // XSA-216: a response written over stale bytes must not leave them in its padding.
        var slot = [UInt8](repeating: 0xAA, count: 112)
        let rsp = BlockResponse(id: 0x1122_3344_5566_7788, operation: .discard, status: .notSupported)
        slot.withUnsafeMutableBytes { rsp.write(toSlot: $0.baseAddress!, abi: abi) }
        var id: UInt64 = 0, op: UInt8 = 0, status: Int16 = 0
        slot.withUnsafeBytes { cblkif_probe_read_response($0.baseAddress, abi == .x86_32 ? 1 : 0, &id, &op, &status) }
        #expect(id == 0x1122_3344_5566_7788 && op == UInt8(BLKIF_OP_DISCARD) && status == Int16(BLKIF_RSP_EOPNOTSUPP))
        let L = abi.layout
        let fieldBytes = Set(Array(0..<8) + [L.responseOperation, L.responseStatus, L.responseStatus + 1])
        for i in 0..<abi.responseSize where !fieldBytes.contains(i) {
            #expect(slot[i] == 0, "padding byte \(i) not zeroed")
        }
        #expect(slot[abi.responseSize...].allSatisfy { $0 == 0xAA })  // nothing past the response
        let back = slot.withUnsafeBytes { BlockResponse(copyingSlotAt: $0.baseAddress!, abi: abi) }
        #expect(back == rsp)
        #expect(abi == .x86_32 ? abi.responseSize == 12 : abi.responseSize == 16)
    }

    @Test func errorsCarryTheResponseToSend() {
        let e = CSlot.rw(.native, op: 99, nseg: 1, id: 31337, sector: 0, segs: [(1, 0, 0)]).refusal(.native, disk)
        #expect(e?.response == BlockResponse(id: 31337, operation: BlkifOperation(99), status: .notSupported))
        let r = BlockRequest(id: 9, operation: .flush(sector: 0, segments: []))
        #expect(r.response(.okay) == BlockResponse(id: 9, operation: .flushDiskCache, status: .okay))
    }
}
