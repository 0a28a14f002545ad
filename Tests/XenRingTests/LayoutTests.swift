import CRingReference
import CXen
import Testing
import XenABI
import XenRing

/// Every size, offset and entry count the Swift ring uses equals what the C
/// compiler computes from Xen's headers.
@Suite(.timeLimit(.minutes(5)))
struct LayoutTests {
    @Test func sharedHeaderOffsetsAreRingH() {
        #expect(RingGeometry.requestProducerOffset == cref_sring_offset_req_prod())
        #expect(RingGeometry.requestEventOffset == cref_sring_offset_req_event())
        #expect(RingGeometry.responseProducerOffset == cref_sring_offset_rsp_prod())
        #expect(RingGeometry.responseEventOffset == cref_sring_offset_rsp_event())
        #expect(RingGeometry.paddingRange.lowerBound == cref_sring_offset_pvt())
        #expect(cref_sring_offset_pad() == cref_sring_offset_pvt() + 4)
        #expect(RingGeometry.headerSize == cref_blkif_ring_offset())
        #expect(RingGeometry.headerSize == cref_netif_tx_ring_offset())
        #expect(RingGeometry.headerSize == cref_netif_rx_ring_offset())
        #expect(RingGeometry.paddingRange.upperBound == RingGeometry.headerSize)
    }

    @Test func blkifStructsAreTheCLayout() {
        #expect(MemoryLayout<blkif_request>.size == 112)
        #expect(MemoryLayout<blkif_request>.size == cref_sizeof_blkif_request())
        #expect(MemoryLayout<blkif_request>.alignment == cref_alignof_blkif_request())
        #expect(MemoryLayout<blkif_request_segment>.size == cref_sizeof_blkif_request_segment())
        let req: [PartialKeyPath<blkif_request>] = [\.operation, \.nr_segments, \.handle, \.id, \.sector_number, \.seg]
        for (i, path) in req.enumerated() {
            #expect(MemoryLayout<blkif_request>.offset(of: path) == cref_offsetof_blkif_request(Int32(i)), "field \(i)")
        }
        #expect(MemoryLayout<blkif_response>.size == cref_sizeof_blkif_response())
        let rsp: [PartialKeyPath<blkif_response>] = [\.id, \.operation, \.status]
        for (i, path) in rsp.enumerated() {
            #expect(MemoryLayout<blkif_response>.offset(of: path) == cref_offsetof_blkif_response(Int32(i)), "field \(i)")
        }
    }

    @Test func netifStructsAreTheCLayout() {
        #expect(MemoryLayout<netif_tx_request>.size == cref_sizeof_netif_tx_request())
        let txq: [PartialKeyPath<netif_tx_request>] = [\.gref, \.offset, \.flags, \.id, \.size]
        for (i, p) in txq.enumerated() { #expect(MemoryLayout<netif_tx_request>.offset(of: p) == cref_offsetof_netif_tx_request(Int32(i))) }
        #expect(MemoryLayout<netif_tx_response>.size == cref_sizeof_netif_tx_response())
        let txs: [PartialKeyPath<netif_tx_response>] = [\.id, \.status]
        for (i, p) in txs.enumerated() { #expect(MemoryLayout<netif_tx_response>.offset(of: p) == cref_offsetof_netif_tx_response(Int32(i))) }
        #expect(MemoryLayout<netif_rx_request>.size == cref_sizeof_netif_rx_request())
        let rxq: [PartialKeyPath<netif_rx_request>] = [\.id, \.pad, \.gref]
        for (i, p) in rxq.enumerated() { #expect(MemoryLayout<netif_rx_request>.offset(of: p) == cref_offsetof_netif_rx_request(Int32(i))) }
        #expect(MemoryLayout<netif_rx_response>.size == cref_sizeof_netif_rx_response())
        let rxs: [PartialKeyPath<netif_rx_response>] = [\.id, \.offset, \.flags, \.status]
        for (i, p) in rxs.enumerated() { #expect(MemoryLayout<netif_rx_response>.offset(of: p) == cref_offsetof_netif_rx_response(Int32(i))) }
    }

    @Test(arguments: [1, 2, 4, 8, 16, 32])
    func entrySizesAndCountsAreRingSize(pages: Int) throws {
        try expectGeometry(BlkifFlavor.self, pages: pages)
        try expectGeometry(NetifTxFlavor.self, pages: pages)
        try expectGeometry(NetifRxFlavor.self, pages: pages)
    }

    func expectGeometry<F: RingFlavor>(_: F.Type, pages: Int) throws {
        let g = try RingGeometry(request: F.Req.self, response: F.Rsp.self, pageCount: pages)
        let bytes = pages * XenPage.size
        #expect(g.entrySize == F.entrySize(), "\(F.name) entry size")
        let page = TestPages(count: pages)
        #expect(g.entryCount == F.ringSize(page.base, bytes), "\(F.name) __RING_SIZE over \(pages) pages")
        #expect(g.entryCount == F.constRingSize(bytes), "\(F.name) __CONST_RING_SIZE over \(pages) pages")
        #expect(g.entryCount.nonzeroBitCount == 1)
        #expect(g.byteCount == bytes)
        let front = try FrontRing<F.Req, F.Rsp>(initializing: page.memory)
        #expect(front.size == g.entryCount)
    }

    @Test func knownCounts() throws {
        // The figures Linux and Mini-OS rely on: 32 blkif entries, 256 netif entries per page.
        #expect(try RingGeometry(request: blkif_request.self, response: blkif_response.self).entryCount == 32)
        #expect(try RingGeometry(request: blkif_request.self, response: blkif_response.self, pageOrder: 3).entryCount == 256)
        #expect(try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self).entryCount == 256)
        #expect(try RingGeometry(request: netif_rx_request.self, response: netif_rx_response.self).entryCount == 256)
    }

    @Test func geometriesRingHCannotDescribeAreRefused() {
        for pages in [0, 3, 6, -1] {
            #expect(throws: RingError.self) {
                try RingGeometry(request: blkif_request.self, response: blkif_response.self, pageCount: pages)
            }
        }
        #expect(throws: RingError.self) { try RingGeometry(entrySize: 8192, pageCount: 1) }
        #expect(throws: RingError.self) { try RingGeometry(request: blkif_request.self, response: blkif_response.self, pageOrder: -1) }
        do {
            _ = try RingGeometry(entrySize: 4096, pageCount: 1)
            Issue.record("a 4096-byte entry does not fit after the header")
        } catch { #expect(error.code == .badGeometry) }
    }
}
