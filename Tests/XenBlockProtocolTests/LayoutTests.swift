import CBlkifABI
import CBlkifProbe
import CXen
import Testing
@testable import XenBlockProtocol

/// Every offset the codec uses is the C compiler's, and the i386 layout is Linux's.
@Suite(.timeLimit(.minutes(5)))
struct LayoutTests {
    let c = cblkif_probe_layout()

    @Test func nativeOffsetsAreCs() {
        let n = BlkifLayout.native
        #expect(n.operation == Int(c.req_operation))
        #expect(n.nrSegments == Int(c.req_nr_segments))
        #expect(n.handle == Int(c.req_handle))
        #expect(n.id == Int(c.req_id))
        #expect(n.sector == Int(c.req_sector_number))
        #expect(n.segments == Int(c.req_seg))
        #expect(n.discardFlag == Int(c.discard_flag))
        #expect(n.discardSector == Int(c.discard_sector_number))
        #expect(n.discardCount == Int(c.discard_nr_sectors))
        #expect(n.indirectOp == Int(c.indirect_indirect_op))
        #expect(n.indirectNrSegments == Int(c.indirect_nr_segments))
        #expect(n.indirectSector == Int(c.indirect_sector_number))
        #expect(n.indirectHandle == Int(c.indirect_handle))
        #expect(n.indirectGrefs == Int(c.indirect_grefs))
        #expect(n.responseOperation == Int(c.rsp_operation))
        #expect(n.responseStatus == Int(c.rsp_status))
        #expect(Int(c.rsp_id) == 0)  // the codec writes id at 0 for both ABIs
        #expect(SegmentLayout.stride == Int(c.seg_size))
        #expect(SegmentLayout.gref == Int(c.seg_gref))
        #expect(SegmentLayout.first == Int(c.seg_first_sect))
        #expect(SegmentLayout.last == Int(c.seg_last_sect))
        #expect(MemoryLayout<blkif_request>.size == Int(c.req_size))
        #expect(MemoryLayout<blkif_response>.size == Int(c.rsp_size))
        #expect(BlkifABI.x86_64.slotSize == Int(c.ring_entry_size))
        #expect(BlkifABI.x86_64.requestSize == Int(c.req_size))
        #expect(BlkifABI.x86_64.responseSize == Int(c.rsp_size))
        // Both variants fit the slot the ring reserves (blkif.h: "sizeof(...) <= sizeof(struct blkif_request)").
        #expect(c.discard_size <= c.req_size && c.indirect_size <= c.req_size)
    }

    @Test func x86_32OffsetsAreCsAndLinuxs() {
        let x = BlkifLayout.x86_32
        #expect(x.id == Int(c.x32_id))
        #expect(x.sector == Int(c.x32_sector_number))
        #expect(x.segments == Int(c.x32_seg))
        #expect(x.discardCount == Int(c.x32_discard_nr_sectors))
        #expect(x.indirectGrefs == Int(c.x32_indirect_grefs))
        #expect(x.indirectHandle == Int(c.x32_indirect_handle))
        #expect(x.responseStatus == Int(c.x32_rsp_status))
        #expect(BlkifABI.x86_32.slotSize == Int(c.x32_entry_size))
        #expect(BlkifABI.x86_32.responseSize == Int(c.x32_rsp_size))
        // The i386 layout as Linux blkback's common.h has it: a u64 aligned to 4.
        #expect((c.x32_req_size, c.x32_id, c.x32_sector_number, c.x32_seg) == (108, 4, 12, 20))
        #expect((c.x32_rsp_size, c.x32_rsp_status, c.x32_entry_size) == (12, 10, 108))
        #expect((c.x32_indirect_size, c.x32_indirect_handle, c.x32_indirect_grefs) == (64, 20, 24))
        #expect(c.x32_discard_nr_sectors == 20)
        // And it really differs from the native one, which is why the backend must care.
        #expect((c.req_size, c.req_id, c.req_sector_number, c.req_seg) == (112, 8, 16, 24))
    }

    @Test(arguments: BlkifABI.allCases)
    func ringSizesAreRingHs(abi: BlkifABI) {
        let x = abi == .x86_32 ? Int32(1) : 0
        #expect(cblkif_probe_ring_offset(x) == cxen_sring_header_size)
        for pages in [1, 2, 4, 8, 16, 512] {
            #expect(abi.ringEntries(pages: pages) == Int(cblkif_probe_ring_size(x, UInt32(pages))), "\(abi), \(pages) pages")
        }
        #expect(abi.ringEntries(pages: 1) == 32)
    }

    @Test func constantsAreTheHeaders() {
        #expect(BlkifOperation.read.rawValue == BLKIF_OP_READ)
        #expect(BlkifOperation.write.rawValue == BLKIF_OP_WRITE)
        #expect(BlkifOperation.writeBarrier.rawValue == BLKIF_OP_WRITE_BARRIER)
        #expect(BlkifOperation.flushDiskCache.rawValue == BLKIF_OP_FLUSH_DISKCACHE)
        #expect(BlkifOperation.reserved1.rawValue == BLKIF_OP_RESERVED_1)
        #expect(BlkifOperation.discard.rawValue == BLKIF_OP_DISCARD)
        #expect(BlkifOperation.indirect.rawValue == BLKIF_OP_INDIRECT)
        #expect(!BlkifOperation.reserved1.isKnown && !BlkifOperation(7).isKnown && BlkifOperation.indirect.isKnown)
        #expect(BlkifStatus.okay.rawValue == BLKIF_RSP_OKAY)
        #expect(BlkifStatus.error.rawValue == BLKIF_RSP_ERROR)
        #expect(BlkifStatus.notSupported.rawValue == BLKIF_RSP_EOPNOTSUPP)
        #expect(BlockDeviceLimits.maxDirectSegments == BLKIF_MAX_SEGMENTS_PER_REQUEST)
        #expect(BlockDeviceLimits.maxIndirectPages == BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
        #expect(BlockDeviceLimits.segmentsPerIndirectPage == Int(cxen_page_size) / Int(c.seg_size))
        #expect(BlockDeviceLimits.maxIndirectSegmentsLimit == 4096)
        #expect(BlockSegments.capacity == BLKIF_MAX_SEGMENTS_PER_REQUEST)
    }

    @Test func protocolNames() {
        #expect(BlkifABI(protocolName: "x86_32-abi") == .x86_32)
        #expect(BlkifABI(protocolName: "x86_64-abi") == .x86_64)
        #expect(BlkifABI(protocolName: "arm-abi") == nil)
        #expect(BlkifABI(protocolName: "x86_64-abi ") == nil)
        #expect(BlkifABI.native.protocolName == XEN_IO_PROTO_ABI_NATIVE)
        for abi in BlkifABI.allCases { #expect(BlkifABI(protocolName: abi.protocolName) == abi) }
    }
}
