import CRingReference
import CXen
import Glibc
import TestSupport
import XenABI
import XenHypervisor
import XenRing

/// Zeroed shared anonymous pages, unmapped when the value goes away.
final class TestPages: @unchecked Sendable {
    // @unchecked: tests hand the address to the threads that use the ring.
    let memory: MappedPages

    init(count: Int) {
        let bytes = count * XenPage.size
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED && p != nil, "mmap failed")
        memory = MappedPages(base: p!, count: count)
    }

    deinit { munmap(memory.base, memory.byteCount) }

    var base: UnsafeMutableRawPointer { memory.base }
    var bytes: UnsafeMutableRawBufferPointer { memory.buffer }
}

/// A seed from XENRING_SEED, or a fresh one; tests print it when they fail.
func testSeed() -> UInt64 {
    if let s = getenv("XENRING_SEED"), let v = UInt64(String(cString: s)) { return v }
    var g = SystemRandomNumberGenerator()
    return g.next()
}

/// Bytes of a trivial value, for filling entries with exact bytes.
func randomValue<T: BitwiseCopyable>(_: T.Type, _ rng: inout SplitMix) -> T {
    withUnsafeTemporaryAllocation(byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment) { raw in
        for i in 0 ..< raw.count { raw[i] = UInt8(truncatingIfNeeded: rng.next()) }
        return raw.load(as: T.self)
    }
}

/// One of the entry types ring.h defines, with the C reference functions for
/// its ring and a padding-free view of its fields.
protocol RingFlavor {
    associatedtype Req: BitwiseCopyable
    associatedtype Rsp: BitwiseCopyable
    associatedtype Ctx
    static var name: String { get }
    static func makeContext() -> Ctx
    static func entrySize() -> Int
    static func ringSize(_ page: UnsafeMutableRawPointer, _ bytes: Int) -> UInt32
    static func constRingSize(_ bytes: Int) -> UInt32
    static func frontInitAt(_ c: UnsafeMutablePointer<Ctx>, _ page: UnsafeMutableRawPointer, _ bytes: Int, _ start: UInt32)
    static func frontAttach(_ c: UnsafeMutablePointer<Ctx>, _ page: UnsafeMutableRawPointer, _ bytes: Int, _ i: UInt32)
    static func backAttach(_ c: UnsafeMutablePointer<Ctx>, _ page: UnsafeMutableRawPointer, _ bytes: Int, _ i: UInt32)
    static func frontProduce(_ c: UnsafeMutablePointer<Ctx>, _ req: UnsafePointer<Req>)
    static func frontPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool
    static func frontConsume(_ c: UnsafeMutablePointer<Ctx>, _ out: UnsafeMutablePointer<Rsp>, _ max: Int32) -> Int32
    static func frontFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool
    static func frontFree(_ c: UnsafeMutablePointer<Ctx>) -> UInt32
    static func backConsume(_ c: UnsafeMutablePointer<Ctx>, _ out: UnsafeMutablePointer<Req>, _ max: Int32) -> Int32
    static func backProduce(_ c: UnsafeMutablePointer<Ctx>, _ rsp: UnsafePointer<Rsp>)
    static func backPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool
    static func backFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool
    /// (req_prod_pvt, rsp_cons, rsp_prod_pvt, req_cons, front nr_ents, back nr_ents)
    static func indices(_ c: UnsafeMutablePointer<Ctx>) -> [UInt32]
    static func requestProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ prod: UInt32) -> Bool
    static func requestConsOverflow(_ c: UnsafeMutablePointer<Ctx>, _ cons: UInt32) -> Bool
    static func responseProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ prod: UInt32) -> Bool
    /// Every field, padding left out.
    static func fields(_ r: Req) -> [UInt64]
    static func fields(_ r: Rsp) -> [UInt64]
}

enum BlkifFlavor: RingFlavor {
    typealias Req = blkif_request
    typealias Rsp = blkif_response
    typealias Ctx = cref_blkif_t
    static let name = "blkif"
    static func makeContext() -> Ctx { Ctx() }
    static func entrySize() -> Int { cref_blkif_entry_size() }
    static func ringSize(_ p: UnsafeMutableRawPointer, _ b: Int) -> UInt32 { cref_blkif_ring_size(p, b) }
    static func constRingSize(_ b: Int) -> UInt32 { cref_blkif_const_ring_size(b) }
    static func frontInitAt(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ s: UInt32) { cref_blkif_front_init_at(c, p, b, s) }
    static func frontAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_blkif_front_attach(c, p, b, i) }
    static func backAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_blkif_back_attach(c, p, b, i) }
    static func frontProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Req>) { cref_blkif_front_produce(c, r) }
    static func frontPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_blkif_front_push(c) != 0 }
    static func frontConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Rsp>, _ m: Int32) -> Int32 { cref_blkif_front_consume(c, o, m) }
    static func frontFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_blkif_front_final_check(c) != 0 }
    static func frontFree(_ c: UnsafeMutablePointer<Ctx>) -> UInt32 { cref_blkif_front_free(c) }
    static func backConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Req>, _ m: Int32) -> Int32 { cref_blkif_back_consume(c, o, m) }
    static func backProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Rsp>) { cref_blkif_back_produce(c, r) }
    static func backPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_blkif_back_push(c) != 0 }
    static func backFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_blkif_back_final_check(c) != 0 }
    static func indices(_ c: UnsafeMutablePointer<Ctx>) -> [UInt32] {
        [c.pointee.front.req_prod_pvt, c.pointee.front.rsp_cons, c.pointee.back.rsp_prod_pvt,
         c.pointee.back.req_cons, c.pointee.front.nr_ents, c.pointee.back.nr_ents]
    }
    static func requestProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_blkif_request_prod_overflow(c, p) != 0 }
    static func requestConsOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_blkif_request_cons_overflow(c, p) != 0 }
    static func responseProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_blkif_response_prod_overflow(c, p) != 0 }
    static func fields(_ r: Req) -> [UInt64] {
        var out: [UInt64] = [UInt64(r.operation), UInt64(r.nr_segments), UInt64(r.handle), r.id, r.sector_number]
        withUnsafeBytes(of: r.seg) { raw in
            for i in 0 ..< Int(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
                let s = raw.load(fromByteOffset: i * MemoryLayout<blkif_request_segment>.stride, as: blkif_request_segment.self)
                out += [UInt64(s.gref), UInt64(s.first_sect), UInt64(s.last_sect)]
            }
        }
        return out
    }
    static func fields(_ r: Rsp) -> [UInt64] { [r.id, UInt64(r.operation), UInt64(UInt16(bitPattern: r.status))] }
}

enum NetifTxFlavor: RingFlavor {
    typealias Req = netif_tx_request
    typealias Rsp = netif_tx_response
    typealias Ctx = cref_netif_tx_t
    static let name = "netif_tx"
    static func makeContext() -> Ctx { Ctx() }
    static func entrySize() -> Int { cref_netif_tx_entry_size() }
    static func ringSize(_ p: UnsafeMutableRawPointer, _ b: Int) -> UInt32 { cref_netif_tx_ring_size(p, b) }
    static func constRingSize(_ b: Int) -> UInt32 { cref_netif_tx_const_ring_size(b) }
    static func frontInitAt(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ s: UInt32) { cref_netif_tx_front_init_at(c, p, b, s) }
    static func frontAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_netif_tx_front_attach(c, p, b, i) }
    static func backAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_netif_tx_back_attach(c, p, b, i) }
    static func frontProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Req>) { cref_netif_tx_front_produce(c, r) }
    static func frontPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_tx_front_push(c) != 0 }
    static func frontConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Rsp>, _ m: Int32) -> Int32 { cref_netif_tx_front_consume(c, o, m) }
    static func frontFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_tx_front_final_check(c) != 0 }
    static func frontFree(_ c: UnsafeMutablePointer<Ctx>) -> UInt32 { cref_netif_tx_front_free(c) }
    static func backConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Req>, _ m: Int32) -> Int32 { cref_netif_tx_back_consume(c, o, m) }
    static func backProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Rsp>) { cref_netif_tx_back_produce(c, r) }
    static func backPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_tx_back_push(c) != 0 }
    static func backFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_tx_back_final_check(c) != 0 }
    static func indices(_ c: UnsafeMutablePointer<Ctx>) -> [UInt32] {
        [c.pointee.front.req_prod_pvt, c.pointee.front.rsp_cons, c.pointee.back.rsp_prod_pvt,
         c.pointee.back.req_cons, c.pointee.front.nr_ents, c.pointee.back.nr_ents]
    }
    static func requestProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_tx_request_prod_overflow(c, p) != 0 }
    static func requestConsOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_tx_request_cons_overflow(c, p) != 0 }
    static func responseProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_tx_response_prod_overflow(c, p) != 0 }
    static func fields(_ r: Req) -> [UInt64] { [UInt64(r.gref), UInt64(r.offset), UInt64(r.flags), UInt64(r.id), UInt64(r.size)] }
    static func fields(_ r: Rsp) -> [UInt64] { [UInt64(r.id), UInt64(UInt16(bitPattern: r.status))] }
}

enum NetifRxFlavor: RingFlavor {
    typealias Req = netif_rx_request
    typealias Rsp = netif_rx_response
    typealias Ctx = cref_netif_rx_t
    static let name = "netif_rx"
    static func makeContext() -> Ctx { Ctx() }
    static func entrySize() -> Int { cref_netif_rx_entry_size() }
    static func ringSize(_ p: UnsafeMutableRawPointer, _ b: Int) -> UInt32 { cref_netif_rx_ring_size(p, b) }
    static func constRingSize(_ b: Int) -> UInt32 { cref_netif_rx_const_ring_size(b) }
    static func frontInitAt(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ s: UInt32) { cref_netif_rx_front_init_at(c, p, b, s) }
    static func frontAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_netif_rx_front_attach(c, p, b, i) }
    static func backAttach(_ c: UnsafeMutablePointer<Ctx>, _ p: UnsafeMutableRawPointer, _ b: Int, _ i: UInt32) { cref_netif_rx_back_attach(c, p, b, i) }
    static func frontProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Req>) { cref_netif_rx_front_produce(c, r) }
    static func frontPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_rx_front_push(c) != 0 }
    static func frontConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Rsp>, _ m: Int32) -> Int32 { cref_netif_rx_front_consume(c, o, m) }
    static func frontFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_rx_front_final_check(c) != 0 }
    static func frontFree(_ c: UnsafeMutablePointer<Ctx>) -> UInt32 { cref_netif_rx_front_free(c) }
    static func backConsume(_ c: UnsafeMutablePointer<Ctx>, _ o: UnsafeMutablePointer<Req>, _ m: Int32) -> Int32 { cref_netif_rx_back_consume(c, o, m) }
    static func backProduce(_ c: UnsafeMutablePointer<Ctx>, _ r: UnsafePointer<Rsp>) { cref_netif_rx_back_produce(c, r) }
    static func backPush(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_rx_back_push(c) != 0 }
    static func backFinalCheck(_ c: UnsafeMutablePointer<Ctx>) -> Bool { cref_netif_rx_back_final_check(c) != 0 }
    static func indices(_ c: UnsafeMutablePointer<Ctx>) -> [UInt32] {
        [c.pointee.front.req_prod_pvt, c.pointee.front.rsp_cons, c.pointee.back.rsp_prod_pvt,
         c.pointee.back.req_cons, c.pointee.front.nr_ents, c.pointee.back.nr_ents]
    }
    static func requestProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_rx_request_prod_overflow(c, p) != 0 }
    static func requestConsOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_rx_request_cons_overflow(c, p) != 0 }
    static func responseProdOverflow(_ c: UnsafeMutablePointer<Ctx>, _ p: UInt32) -> Bool { cref_netif_rx_response_prod_overflow(c, p) != 0 }
    static func fields(_ r: Req) -> [UInt64] { [UInt64(r.id), UInt64(r.pad), UInt64(r.gref)] }
    static func fields(_ r: Rsp) -> [UInt64] { [UInt64(r.id), UInt64(r.offset), UInt64(r.flags), UInt64(UInt16(bitPattern: r.status))] }
}
