import CRingReference
import CXen
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
import XenRing

/// The same random operations applied to a ring driven by ring.h's macros and
/// to a Swift ring leave identical page bytes, identical private indices and
/// identical notify and final-check decisions after every step.
@Suite(.timeLimit(.minutes(5)))
struct DifferentialTests {
    static let starts: [UInt32] = [0, 1, 0xFFFF_FFFF - 2, 0xFFFF_FFFF - 40, 0xFFFF_FFFF - 300, 0x8000_0000 - 7]

    @Test(arguments: starts, [1, 2, 4, 8])
    func blkifMatchesRingH(start: UInt32, pages: Int) throws {
        try run(BlkifFlavor.self, start: start, pages: pages, steps: pages == 1 ? 3000 : 1200)
    }

    @Test(arguments: starts, [1, 2])
    func netifTxMatchesRingH(start: UInt32, pages: Int) throws {
        try run(NetifTxFlavor.self, start: start, pages: pages, steps: 2500)
    }

    @Test(arguments: starts, [1])
    func netifRxMatchesRingH(start: UInt32, pages: Int) throws {
        try run(NetifRxFlavor.self, start: start, pages: pages, steps: 2500)
    }

    func run<F: RingFlavor>(_: F.Type, start: UInt32, pages: Int, steps: Int) throws {
        let seed = testSeed()
        let where_ = "\(F.name) start=\(start) pages=\(pages) seed=\(seed) (rerun with XENRING_SEED=\(seed))"
        var rng = SplitMix(seed: seed)
        let cPages = TestPages(count: pages)
        let sPages = TestPages(count: pages)
        // Different garbage in both, to show initialisation covers what it must.
        for i in 0 ..< cPages.bytes.count { cPages.bytes[i] = 0xA5; sPages.bytes[i] = 0xA5 }
        let bytes = pages * XenPage.size
        let ctx = UnsafeMutablePointer<F.Ctx>.allocate(capacity: 1)
        defer { ctx.deallocate() }
        ctx.initialize(to: F.makeContext())

        F.frontInitAt(ctx, cPages.base, bytes, start)
        F.backAttach(ctx, cPages.base, bytes, start)
        var front = try FrontRing<F.Req, F.Rsp>(initializing: sPages.base, pageCount: pages, startIndex: RingIndex(start))
        var back = try BackRing<F.Req, F.Rsp>(attachingTo: sPages.base, pageCount: pages, at: RingIndex(start))

        let reqSize = MemoryLayout<F.Req>.size, rspSize = MemoryLayout<F.Rsp>.size
        let cOutReq = UnsafeMutablePointer<F.Req>.allocate(capacity: 512)
        let cOutRsp = UnsafeMutablePointer<F.Rsp>.allocate(capacity: 512)
        defer { cOutReq.deallocate(); cOutRsp.deallocate() }
        var inFlightRequests: [[UInt64]] = []   // produced, not yet consumed by the back
        var inFlightResponses: [[UInt64]] = []

        func check(_ step: Int, _ op: String) -> Bool {
            let same = memcmp(cPages.base, sPages.base, bytes) == 0
            let c = F.indices(ctx)
            let s = [front.requestProducer.rawValue, front.responseConsumer.rawValue,
                     back.responseProducer.rawValue, back.requestConsumer.rawValue, front.size, back.size]
            #expect(same, "page bytes differ after step \(step) \(op); \(where_)")
            #expect(c == s, "indices differ after step \(step) \(op): C \(c) Swift \(s); \(where_)")
            return same && c == s
        }
        #expect(check(-1, "init"))

        for step in 0 ..< steps {
            var op = ""
            switch rng.next() % 8 {
            case 0, 1:  // the frontend produces a few requests
                let n = Int(rng.next() % 6)
                op = "produce \(n)"
                for _ in 0 ..< n where F.frontFree(ctx) > 0 {
                    #expect(!front.isFull && front.freeRequests == F.frontFree(ctx), "\(where_)")
                    let raw = (0 ..< reqSize).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    raw.withUnsafeBytes { buf in
                        F.frontProduce(ctx, buf.baseAddress!.assumingMemoryBound(to: F.Req.self))
                        front.withNextRequestSlot { slot in
                            UnsafeMutableRawPointer(slot).copyMemory(from: buf.baseAddress!, byteCount: reqSize)
                        }
                        inFlightRequests.append(F.fields(buf.load(as: F.Req.self)))
                    }
                }
                #expect(front.freeRequests == F.frontFree(ctx), "\(where_)")
            case 2:
                op = "push requests"
                let c = F.frontPush(ctx)
                let s = front.pushRequests()
                #expect(c == s, "request notify differs at step \(step): C \(c) Swift \(s); \(where_)")
            case 3:  // the backend consumes up to max requests, one read of req_prod
                let max = Int32(rng.next() % 40)
                op = "consume requests \(max)"
                let cn = F.backConsume(ctx, cOutReq, max)
                let available = try back.checkForRequests()
                var sn: Int32 = 0
                while sn < max, let req = back.nextRequest() {
                    #expect(F.fields(req) == F.fields(cOutReq[Int(sn)]), "request copy differs; \(where_)")
                    #expect(F.fields(req) == inFlightRequests.first, "request payload lost; \(where_)")
                    inFlightRequests.removeFirst()
                    sn += 1
                }
                #expect(cn == sn && Int32(available) >= sn, "C took \(cn), Swift \(sn) of \(available); \(where_)")
            case 4:  // the backend answers some consumed requests
                let n = Int(rng.next() % 6)
                op = "produce responses \(n)"
                for _ in 0 ..< n where back.unansweredRequests > 0 {
                    let raw = (0 ..< rspSize).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                    raw.withUnsafeBytes { buf in
                        F.backProduce(ctx, buf.baseAddress!.assumingMemoryBound(to: F.Rsp.self))
                        back.withNextResponseSlot { slot in
                            UnsafeMutableRawPointer(slot).copyMemory(from: buf.baseAddress!, byteCount: rspSize)
                        }
                        inFlightResponses.append(F.fields(buf.load(as: F.Rsp.self)))
                    }
                }
            case 5:
                op = "push responses"
                let c = F.backPush(ctx)
                let s = back.pushResponses()
                #expect(c == s, "response notify differs at step \(step): C \(c) Swift \(s); \(where_)")
            case 6:
                let max = Int32(rng.next() % 40)
                op = "consume responses \(max)"
                let cn = F.frontConsume(ctx, cOutRsp, max)
                _ = try front.checkForResponses()
                var sn: Int32 = 0
                while sn < max, let rsp = front.nextResponse() {
                    #expect(F.fields(rsp) == F.fields(cOutRsp[Int(sn)]), "response copy differs; \(where_)")
                    #expect(F.fields(rsp) == inFlightResponses.first, "response payload lost; \(where_)")
                    inFlightResponses.removeFirst()
                    sn += 1
                }
                #expect(cn == sn, "C took \(cn) responses, Swift \(sn); \(where_)")
            default:
                if rng.next() % 2 == 0 {
                    op = "final check requests"
                    let c = F.backFinalCheck(ctx)
                    let s = try back.finalCheckForRequests()
                    #expect(c == s, "final check for requests differs at step \(step); \(where_)")
                } else {
                    op = "final check responses"
                    let c = F.frontFinalCheck(ctx)
                    let s = try front.finalCheckForResponses()
                    #expect(c == s, "final check for responses differs at step \(step); \(where_)")
                }
            }
            if !check(step, op) { return }
        }
        // The run must have gone around the ring and, from a high start, across 2^32.
        let travelled = front.requestProducer.rawValue &- start
        #expect(travelled > front.size, "only \(travelled) requests; \(where_)")
        if start > 0xFFFF_0000 { #expect(front.requestProducer.rawValue < start, "did not wrap; \(where_)") }
    }
}
