import CRingReference
import CXen
import Testing
import XenABI
import XenHypervisor
import XenRing

typealias BlkFront = FrontRing<blkif_request, blkif_response>
typealias BlkBack = BackRing<blkif_request, blkif_response>

/// A peer that writes nonsense into the shared header gets a typed error,
/// never a crash, a hang or a request consumed twice.
@Suite(.timeLimit(.minutes(5)))
struct HostilePeerTests {
    /// C's verdict on a producer index, for comparison with Swift's.
    func cVerdict(page: TestPages, rspProdPvt: UInt32, reqProd: UInt32) -> Bool {
        var ctx = cref_blkif_t()
        cref_blkif_back_attach(&ctx, page.base, XenPage.size, rspProdPvt)
        return cref_blkif_request_prod_overflow(&ctx, reqProd) != 0
    }

    @Test(arguments: [UInt32(33), 64, 0x8000_0000, 0xFFFF_FFFF, 1000])
    func requestProducerFarAheadIsATypedError(reqProd: UInt32) throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        for i in 0 ..< 3 { var r = blkif_request(); r.id = UInt64(i); front.produce(r) }
        _ = front.pushRequests()
        var back = try BlkBack(attachingTo: page.memory)
        #expect(try back.checkForRequests() == 3)
        #expect(back.nextRequest()?.id == 0)
        // The frontend now claims more than a ring of requests.
        page.memory.base.storeBytes(of: reqProd, toByteOffset: RingGeometry.requestProducerOffset, as: UInt32.self)
        #expect(cVerdict(page: page, rspProdPvt: 0, reqProd: reqProd), "ring.h calls \(reqProd) an overflow too")
        do {
            _ = try back.checkForRequests()
            Issue.record("accepted req_prod \(reqProd)")
        } catch {
            #expect(error.code == .requestProducerOverflow)
            #expect(error.producerIndex == RingIndex(reqProd))
        }
        #expect(throws: RingError.self) { _ = try back.finalCheckForRequests() }
        // Nothing more was consumed; the requests seen before the lie stay takeable.
        #expect(back.requestConsumer == RingIndex(1))
        #expect(back.nextRequest()?.id == 1)
        #expect(back.nextRequest()?.id == 2)
        #expect(back.nextRequest() == nil)
    }

    @Test func exactlyOneRingAheadIsLegalAndConsumptionStopsAtRingSize() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        var back = try BlkBack(attachingTo: page.memory)
        // 32 requests fill the ring; the backend takes them all but answers none.
        while !front.isFull { var r = blkif_request(); r.id = UInt64(front.requestProducer.rawValue); front.produce(r) }
        _ = front.pushRequests()
        #expect(try back.checkForRequests() == 32)
        var taken = 0
        while back.nextRequest() != nil { taken += 1 }
        #expect(taken == 32)
        #expect(back.nextRequest() == nil)
        var ctx = cref_blkif_t()
        cref_blkif_back_attach(&ctx, page.base, XenPage.size, 0)
        #expect(cref_blkif_request_cons_overflow(&ctx, 32) != 0, "ring.h: req_cons 32 overflows too")
        #expect(cref_blkif_request_prod_overflow(&ctx, 32) == 0)
        // A frontend that now bumps req_prod by one before any answer lies.
        page.memory.base.storeBytes(of: UInt32(33), toByteOffset: 0, as: UInt32.self)
        #expect(throws: RingError.self) { _ = try back.checkForRequests() }
        #expect(back.nextRequest() == nil, "a slot still owed a response is not a request")
        // After one answer the next slot is free again.
        page.memory.base.storeBytes(of: UInt32(32), toByteOffset: 0, as: UInt32.self)
        back.produce(blkif_response())
        _ = back.pushResponses()
        #expect(try back.checkForRequests() == 0)
    }

    @Test func requestProducerGoingBackIsATypedError() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        for _ in 0 ..< 6 { front.produce(blkif_request()) }
        _ = front.pushRequests()
        var back = try BlkBack(attachingTo: page.memory)
        _ = try back.checkForRequests()
        for _ in 0 ..< 5 { _ = back.nextRequest() }
        back.produce(blkif_response())
        _ = back.pushResponses()
        // req_prod 2 lies between rsp_prod_pvt (1) and req_cons (5): it went back.
        page.memory.base.storeBytes(of: UInt32(2), toByteOffset: 0, as: UInt32.self)
        do {
            _ = try back.checkForRequests()
            Issue.record("accepted a producer index that went back")
        } catch { #expect(error.code == .requestProducerWentBack) }
        // req_prod 0 lies behind rsp_prod_pvt: more than a ring ahead in RING_IDX arithmetic.
        page.memory.base.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
        do {
            _ = try back.checkForRequests()
            Issue.record("accepted a producer index behind the responses")
        } catch { #expect(error.code == .requestProducerOverflow) }
        #expect(back.requestConsumer == RingIndex(5))
    }

    @Test(arguments: [UInt32(33), 0x8000_0000, 0xFFFF_FFF0])
    func responseProducerFarAheadIsATypedError(rspProd: UInt32) throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        for _ in 0 ..< 4 { front.produce(blkif_request()) }
        _ = front.pushRequests()
        page.memory.base.storeBytes(of: rspProd, toByteOffset: RingGeometry.responseProducerOffset, as: UInt32.self)
        var ctx = cref_blkif_t()
        cref_blkif_front_attach(&ctx, page.base, XenPage.size, 0)
        #expect(cref_blkif_response_prod_overflow(&ctx, rspProd) != 0)
        do {
            _ = try front.checkForResponses()
            Issue.record("accepted rsp_prod \(rspProd)")
        } catch {
            #expect(error.code == .responseProducerOverflow)
            #expect(error.producerIndex == RingIndex(rspProd))
        }
        #expect(throws: RingError.self) { _ = try front.finalCheckForResponses() }
        #expect(front.nextResponse() == nil)
        #expect(front.responseConsumer == RingIndex(0))
    }

    @Test func responsesBeyondRequestsAreATypedError() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        for _ in 0 ..< 2 { front.produce(blkif_request()) }
        _ = front.pushRequests()
        // Within a ring of rsp_cons, so ring.h would accept it, but only 2 requests exist.
        page.memory.base.storeBytes(of: UInt32(5), toByteOffset: RingGeometry.responseProducerOffset, as: UInt32.self)
        do {
            _ = try front.checkForResponses()
            Issue.record("accepted responses to requests never made")
        } catch { #expect(error.code == .responseWithoutRequest) }
        #expect(front.nextResponse() == nil)
    }

    @Test func eachRequestIsCopiedOutOnce() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        var r = blkif_request()
        r.id = 7; r.nr_segments = 1
        front.produce(r)
        _ = front.pushRequests()
        var back = try BlkBack(attachingTo: page.memory)
        _ = try back.checkForRequests()
        let taken = back.nextRequest()
        let copy = try #require(taken)
        // The frontend rewrites the slot after it was taken: the copy does not change.
        page.memory.base.storeBytes(of: UInt64(99), toByteOffset: RingGeometry.headerSize + 8, as: UInt64.self)
        page.memory.base.storeBytes(of: UInt8(200), toByteOffset: RingGeometry.headerSize + 1, as: UInt8.self)
        #expect(copy.id == 7 && copy.nr_segments == 1)
        #expect(back.nextRequest() == nil, "one request, taken once")
    }
}

/// Writing fields in place leaves the slot's padding as the peer left it, so
/// no byte of this side's stack reaches shared memory (XSA-216).
@Suite(.timeLimit(.minutes(5)))
struct PaddingTests {
    @Test func inPlaceResponsesCarryNoStackBytes() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        for _ in 0 ..< 4 { front.withNextRequestSlot { $0.pointee.nr_segments = 1 } }
        _ = front.pushRequests()
        // The frontend's own bytes in every slot, padding included.
        for i in RingGeometry.headerSize ..< XenPage.size { page.bytes[i] = 0xEE }
        var back = try BlkBack(attachingTo: page.memory)
        _ = try back.checkForRequests()
        for id in 0 ..< 4 {
            _ = back.nextRequest()
            back.withNextResponseSlot { slot in
                slot.pointee.id = UInt64(id)
                slot.pointee.operation = UInt8(BLKIF_OP_READ)
                slot.pointee.status = Int16(BLKIF_RSP_OKAY)
            }
        }
        _ = back.pushResponses()
        let entry = MemoryLayout<blkif_request>.size
        let padding = [9, 12, 13, 14, 15]  // blkif_response: after operation, after status
        for slot in 0 ..< 4 {
            for offset in padding {
                #expect(page.bytes[RingGeometry.headerSize + slot * entry + offset] == 0xEE, "slot \(slot) byte \(offset)")
            }
        }
    }
}
