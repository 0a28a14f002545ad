import Atomics
import CRingReference
import CXen
import TestSupport
import Testing
import XenABI
import XenHypervisor
import XenRing

/// One side of a blkif ring, driven either by ring.h's macros or by XenRing.
protocol BlkFrontSide: ~Copyable, SendableMetatype {
    mutating func free() -> UInt32
    mutating func produce(_ request: blkif_request)
    mutating func push()
    /// Takes every response visible now; nil when the backend broke the ring.
    mutating func take(_ body: (blkif_response) -> Void) -> Int?
}

protocol BlkBackSide: ~Copyable, SendableMetatype {
    /// Takes the requests visible now, answering each; nil when the frontend broke the ring.
    mutating func serve(_ answer: (blkif_request) -> blkif_response) -> Int?
}

struct SwiftFront: BlkFrontSide, ~Copyable {
    var ring: FrontRing<blkif_request, blkif_response>
    mutating func free() -> UInt32 { ring.freeRequests }
    mutating func produce(_ request: blkif_request) { ring.produce(request) }
    mutating func push() { _ = ring.pushRequests() }
    mutating func take(_ body: (blkif_response) -> Void) -> Int? {
        guard (try? ring.checkForResponses()) != nil else { return nil }
        var n = 0
        while let r = ring.nextResponse() { body(r); n += 1 }
        return n
    }
}

struct SwiftBack: BlkBackSide, ~Copyable {
    var ring: BackRing<blkif_request, blkif_response>
    mutating func serve(_ answer: (blkif_request) -> blkif_response) -> Int? {
        guard (try? ring.checkForRequests()) != nil else { return nil }
        var n = 0
        while let req = ring.nextRequest() {
            let rsp = answer(req)
            ring.withNextResponseSlot { $0.pointee = rsp }
            n += 1
        }
        if n > 0 { _ = ring.pushResponses() }
        return n
    }
}

struct CFront: BlkFrontSide, ~Copyable {
    let ctx: UnsafeMutablePointer<cref_blkif_t>
    mutating func free() -> UInt32 { cref_blkif_front_free(ctx) }
    mutating func produce(_ request: blkif_request) { var r = request; cref_blkif_front_produce(ctx, &r) }
    mutating func push() { _ = cref_blkif_front_push(ctx) }
    mutating func take(_ body: (blkif_response) -> Void) -> Int? {
        var out = [blkif_response](repeating: blkif_response(), count: 32)
        let n = Int(cref_blkif_front_consume(ctx, &out, 32))
        if n < 0 { return nil }
        for i in 0 ..< n { body(out[i]) }
        return n
    }
}

struct CBack: BlkBackSide, ~Copyable {
    let ctx: UnsafeMutablePointer<cref_blkif_t>
    mutating func serve(_ answer: (blkif_request) -> blkif_response) -> Int? {
        var reqs = [blkif_request](repeating: blkif_request(), count: 32)
        let n = Int(cref_blkif_back_consume(ctx, &reqs, 32))
        if n < 0 { return nil }
        for i in 0 ..< n { var rsp = answer(reqs[i]); cref_blkif_back_produce(ctx, &rsp) }
        if n > 0 { _ = cref_blkif_back_push(ctx) }
        return n
    }
}

/// The payload of request `n` in a stream seeded with `seed`.
func streamRequest(_ seed: UInt64, _ n: UInt64) -> blkif_request {
    var g = SplitMix(seed: seed ^ (n &* 0x9E37_79B9_7F4A_7C15))
    var r = blkif_request()
    let h = g.next()
    r.operation = UInt8(h & 3)
    r.nr_segments = UInt8(1 + (h >> 8) % UInt64(BLKIF_MAX_SEGMENTS_PER_REQUEST))
    r.handle = UInt16(truncatingIfNeeded: h >> 16)
    r.id = n
    r.sector_number = g.next()
    withUnsafeMutableBytes(of: &r.seg) { raw in
        for i in 0 ..< Int(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            var s = blkif_request_segment()
            let v = g.next()
            s.gref = UInt32(truncatingIfNeeded: v)
            s.first_sect = UInt8(truncatingIfNeeded: v >> 32)
            s.last_sect = UInt8(truncatingIfNeeded: v >> 40)
            raw.storeBytes(of: s, toByteOffset: i * MemoryLayout<blkif_request_segment>.stride, as: blkif_request_segment.self)
        }
    }
    return r
}

/// The backend's answer to a request: a function of the request only.
func streamResponse(_ r: blkif_request) -> blkif_response {
    var s = blkif_response()
    s.id = r.id
    s.operation = r.operation
    s.status = Int16(truncatingIfNeeded: (r.sector_number ^ UInt64(r.handle)) & 1) - 1  // OKAY (0) or ERROR (-1)
    return s
}

/// A long random stream on one page between two pinned-free threads, every
/// request and response checked field by field, each direction C against Swift.
@Suite(.timeLimit(.minutes(5)))
struct StreamTests {
    static let count: UInt64 = 200_000
    static let limitNanoseconds: UInt64 = 40_000_000_000

    @Test func cFrontSwiftBack() async throws {
        let page = TestPages(count: 1)
        let ctx = UnsafeMutablePointer<cref_blkif_t>.allocate(capacity: 1)
        defer { ctx.deallocate() }
        ctx.initialize(to: cref_blkif_t())
        cref_blkif_front_init(ctx, page.base, XenPage.size)
        let back = try BackRing<blkif_request, blkif_response>(attachingTo: page.memory)
        try await runStream(front: CFront(ctx: ctx), back: SwiftBack(ring: back))
    }

    @Test func swiftFrontCBack() async throws {
        let page = TestPages(count: 1)
        let ctx = UnsafeMutablePointer<cref_blkif_t>.allocate(capacity: 1)
        defer { ctx.deallocate() }
        ctx.initialize(to: cref_blkif_t())
        let front = try FrontRing<blkif_request, blkif_response>(initializing: page.memory)
        cref_blkif_back_init(ctx, page.base, XenPage.size)
        try await runStream(front: SwiftFront(ring: front), back: CBack(ctx: ctx))
    }

    @Test func swiftFrontSwiftBack() async throws {
        let page = TestPages(count: 1)
        let front = try FrontRing<blkif_request, blkif_response>(initializing: page.memory)
        let back = try BackRing<blkif_request, blkif_response>(attachingTo: page.memory)
        try await runStream(front: SwiftFront(ring: front), back: SwiftBack(ring: back))
    }

    func runStream<F: BlkFrontSide & ~Copyable, B: BlkBackSide & ~Copyable>(front: consuming F, back: consuming B) async throws {
        let seed = testSeed()
        let total = Self.count
        let deadline = cxen_monotonic_ns() + Self.limitNanoseconds
        let stop = ManagedAtomic<Bool>(false)
        let frontReport = ThreadReport(), backReport = ThreadReport()
        // Each side moves into its thread through a box and back out after the join.
        nonisolated(unsafe) let frontBox = UnsafeMutablePointer<F?>.allocate(capacity: 1)
        nonisolated(unsafe) let backBox = UnsafeMutablePointer<B?>.allocate(capacity: 1)
        frontBox.initialize(to: .some(front))
        backBox.initialize(to: .some(back))
        defer { frontBox.deinitialize(count: 1).deallocate(); backBox.deinitialize(count: 1).deallocate() }

        let backThread = TestThread {
            var side = backBox.pointee.take()!
            var served: UInt64 = 0
            var backoff = Backoff()
            while served < total, !stop.load(ordering: .relaxed) {
                guard let n = side.serve({ req in
                    let want = streamRequest(seed, served)
                    if BlkifFlavor.fields(req) != BlkifFlavor.fields(want) {
                        backReport.fail("request \(served) differs: \(BlkifFlavor.fields(req)) != \(BlkifFlavor.fields(want))")
                        stop.store(true, ordering: .relaxed)
                    }
                    served += 1
                    return streamResponse(req)
                }) else {
                    backReport.fail("frontend broke the ring at \(served)"); stop.store(true, ordering: .relaxed); break
                }
                if n > 0 { backoff.reset(); continue }
                backoff.pause()
                if cxen_monotonic_ns() > deadline { backReport.fail("timed out at \(served)"); stop.store(true, ordering: .relaxed) }
            }
            backReport.count = Int(served)
            backBox.pointee = consume side
        }
        let frontThread = TestThread {
            var side = frontBox.pointee.take()!
            var rng = SplitMix(seed: seed &+ 1)
            var sent: UInt64 = 0, done: UInt64 = 0
            var backoff = Backoff()
            while done < total, !stop.load(ordering: .relaxed) {
                var produced = false
                let want = min(UInt64(side.free()), total - sent, 1 + rng.next() % 32)
                for _ in 0 ..< want { side.produce(streamRequest(seed, sent)); sent += 1; produced = true }
                if produced { side.push() }
                guard let got = side.take({ rsp in
                    let expect = streamResponse(streamRequest(seed, done))
                    if BlkifFlavor.fields(rsp) != BlkifFlavor.fields(expect) {
                        frontReport.fail("response \(done) differs: \(BlkifFlavor.fields(rsp)) != \(BlkifFlavor.fields(expect))")
                        stop.store(true, ordering: .relaxed)
                    }
                    done += 1
                }) else {
                    frontReport.fail("backend broke the ring at \(done)"); stop.store(true, ordering: .relaxed); break
                }
                if got > 0 || produced { backoff.reset(); continue }
                backoff.pause()
                if cxen_monotonic_ns() > deadline { frontReport.fail("timed out at \(done)"); stop.store(true, ordering: .relaxed) }
            }
            frontReport.count = Int(done)
            frontBox.pointee = consume side
        }
        // Each side's own deadline bounds the joins.
        await frontThread.joined()
        await backThread.joined()
        #expect(frontReport.failures.isEmpty && backReport.failures.isEmpty,
                "seed \(seed) (XENRING_SEED=\(seed)): front \(frontReport.failures) back \(backReport.failures)")
        #expect(frontReport.count == Int(total) && backReport.count == Int(total), "seed \(seed)")
    }
}
