import CRingReference
import CXen
import Glibc
import Testing
import XenABI
import XenHypervisor
import XenRing

/// Initialisation belongs to the frontend; attaching touches no shared byte,
/// and a reattached backend resumes where the ring is, like BACK_RING_ATTACH.
@Suite(.timeLimit(.minutes(5)))
struct AttachTests {
    @Test func frontInitIsSharedRingInitAndFrontRingInit() throws {
        let c = TestPages(count: 2), s = TestPages(count: 2)
        for i in 0 ..< c.bytes.count { c.bytes[i] = 0x5A; s.bytes[i] = 0x5A }
        var ctx = cref_blkif_t()
        cref_blkif_front_init(&ctx, c.base, 2 * XenPage.size)
        let front = try BlkFront(initializing: s.memory)
        #expect(memcmp(c.base, s.base, 2 * XenPage.size) == 0)
        #expect(front.requestProducer.rawValue == ctx.front.req_prod_pvt)
        #expect(front.responseConsumer.rawValue == ctx.front.rsp_cons)
        #expect(front.size == ctx.front.nr_ents)
        // The header as ring.h leaves it; the entries are not touched.
        #expect(s.base.load(fromByteOffset: 4, as: UInt32.self) == 1)
        #expect(s.base.load(fromByteOffset: 12, as: UInt32.self) == 1)
        #expect(s.bytes[64] == 0x5A)
    }

    @Test func backAttachWritesNothing() throws {
        let page = TestPages(count: 1)
        for i in 0 ..< page.bytes.count { page.bytes[i] = UInt8(truncatingIfNeeded: i * 7) }
        let before = Array(page.bytes)
        let back = try BlkBack(attachingTo: page.memory, at: RingIndex(12345))
        let front = try BlkFront(attachingTo: page.memory, at: RingIndex(77))
        #expect(Array(page.bytes) == before)
        #expect(back.requestConsumer == RingIndex(12345) && back.responseProducer == RingIndex(12345))
        #expect(front.requestProducer == RingIndex(77) && front.responseConsumer == RingIndex(77))
    }

    @Test func reconnectingBackendResumesAtThePublishedIndex() throws {
        let c = TestPages(count: 1), s = TestPages(count: 1)
        var ctx = cref_blkif_t()
        cref_blkif_front_init(&ctx, c.base, XenPage.size)
        cref_blkif_back_init(&ctx, c.base, XenPage.size)
        var front = try BlkFront(initializing: s.memory)
        do {
            var back = try BlkBack(attachingTo: s.memory)
            for i in 0 ..< 20 {
                var r = blkif_request(); r.id = UInt64(i)
                cref_blkif_front_produce(&ctx, &r)
                front.withNextRequestSlot { $0.pointee.id = UInt64(i) }
            }
            #expect(front.pushRequests() == (cref_blkif_front_push(&ctx) != 0))
            _ = try back.checkForRequests()
            var out = [blkif_request](repeating: blkif_request(), count: 32)
            #expect(cref_blkif_back_consume(&ctx, &out, 12) == 12)
            for _ in 0 ..< 12 {
                let next = back.nextRequest()
                let req = try #require(next)
                var rsp = blkif_response(); rsp.id = req.id
                cref_blkif_back_produce(&ctx, &rsp)
                // Fields in place: a whole-value store would also copy the
                // value's padding, which Swift leaves unspecified.
                back.withNextResponseSlot { slot in
                    slot.pointee.id = req.id
                    slot.pointee.operation = 0
                    slot.pointee.status = 0
                }
            }
            #expect(back.pushResponses() == (cref_blkif_back_push(&ctx) != 0))
            // The backend goes away with 8 requests pushed but never taken.
        }
        // A new backend attaches at the rsp_prod it had published (BACK_RING_ATTACH).
        let resume = s.base.load(fromByteOffset: RingGeometry.responseProducerOffset, as: UInt32.self)
        #expect(resume == 12)
        cref_blkif_back_attach(&ctx, c.base, XenPage.size, resume)
        var back = try BlkBack(attachingTo: s.memory, at: RingIndex(resume))
        #expect(try back.checkForRequests() == 8)
        var out = [blkif_request](repeating: blkif_request(), count: 32)
        #expect(cref_blkif_back_consume(&ctx, &out, 32) == 8)
        var ids: [UInt64] = []
        while let r = back.nextRequest() { ids.append(r.id) }
        #expect(ids == Array(12 ..< 20))
        #expect(out.prefix(8).map(\.id) == Array(12 ..< 20))
        #expect(memcmp(c.base, s.base, XenPage.size) == 0)
    }
}
