import CXen
import Foundation
import DriverTestSupport
import TestSupport
import Testing
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenDriverRuntime
import XenLocks
import XenRing
import XenSimulator

/// A frontend that writes raw slots. Each bad request must get an error response and
/// leave the queue serving the next good one; a producer index far ahead stops that
/// ring only.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockHostileFrontendTests {
    /// Grant copy; persistent mappings; persistent mappings with multi-page requests
    /// copied through bounce pages; on memory (nil) and on a file through io_uring.
    @Test(arguments: [(0, false, nil), (1056, false, nil), (1056, true, nil),
                      (0, false, FileEngineKind.ioUring), (1056, true, FileEngineKind.ioUring)])
    func badRequestsGetErrorResponsesAndTheQueueKeepsServing(persistentGrants: Int, contiguousCopies: Bool,
                                                             engine: FileEngineKind?) async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048, discard: false, maxIndirectSegments: 32),
                                 persistentGrants: persistentGrants, contiguousCopies: contiguousCopies) { _ in
            if let engine { try image.storage(engine: engine) } else { try MemoryStorage(byteCount: 1 << 20) }
        }
        try f.shareAndMap()
        try f.startBackend()
        let pool = f.resources[0].pool.refs
        var zero = rawRequest(.read, id: 2, sector: 0, grefs: [pool[0]])
        zero.nr_segments = 0
        var twelve = rawRequest(.read, id: 3, sector: 0, grefs: Array(pool[0..<11]))
        twelve.nr_segments = 12
        var many = rawRequest(.write, id: 4, sector: 0, grefs: Array(pool[0..<11]))
        many.nr_segments = 255
        var unknown = rawRequest(.read, id: 7, sector: 0, grefs: [pool[0]])
        unknown.operation = 99
        let indirectTooMany = BlockRequest(id: 10, operation: .indirect(IndirectRequest(
            operation: .read, sector: 0, segmentCount: 33, pages: [f.resources[0].indirect.refs[0]]))).encoded()
        let indirectBadPage = BlockRequest(id: 11, operation: .indirect(IndirectRequest(
            operation: .read, sector: 0, segmentCount: 20, pages: [GrantRef(0xdead)]))).encoded()
        let discard = BlockRequest(id: 12, operation: .discard(sector: 0, count: 8, secure: false)).encoded()
        let slots: [blkif_request] = [
            rawRequest(.read, id: 1, sector: 0, grefs: [GrantRef(0xdead)]),                  // grant ref out of the table
            zero, twelve, many,                                                      // 0, 12 and 255 segments
            rawRequest(.read, id: 5, sector: 0, grefs: [pool[0]], first: 5, last: 2),        // first > last
            rawRequest(.read, id: 6, sector: 2047, grefs: [pool[0]]),                        // past the end
            unknown,                                                                 // unknown operation
            rawRequest(.write, id: 8, sector: 8, grefs: [pool[1]]),                          // the same id twice
            rawRequest(.write, id: 8, sector: 16, grefs: [pool[2]]),
            rawRequest(.read, id: 9, sector: 0, grefs: [pool[0]], first: 0, last: 8),        // last_sect past the page
            indirectTooMany, indirectBadPage, discard,
            rawRequest(.read, id: 13, sector: 0, grefs: [f.resources[0].indirect.refs[1]]), // a read into a read-only grant
            rawRequest(.read, id: 100, sector: 0, grefs: [pool[3]]),                         // a good one after all of it
        ]
        let responses = try await f.pushRaw(slots)
        #expect(responses.count == slots.count)
        let status = Dictionary(responses.map { ($0.id, $0.status) }, uniquingKeysWith: { a, _ in a })
        for id: UInt64 in [1, 2, 3, 4, 5, 6, 9, 10, 11, 13] { #expect(status[id] == .error, "request \(id)") }
        #expect(status[7] == .notSupported)
        #expect(status[12] == .notSupported)
        #expect(responses.filter { $0.id == 8 }.map(\.status) == [.okay, .okay])
        #expect(status[100] == .okay)
        #expect(responses.first { $0.id == 7 }?.operation.rawValue == 99)  // the op byte is echoed
        #expect(f.backends[0].queue.failure == nil)
        #expect(f.backends[0].queue.counters.badGrants.value == 3)
        #expect(try f.teardown().isEmpty)
    }

    @Test func theI386LayoutIsServedToo() async throws {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048), abi: .x86_32) { _ in
            let m = try MemoryStorage(byteCount: 1 << 20)
            m.withContents { $0.storeBytes(of: 0xFEED_F00D as UInt32, toByteOffset: 4096, as: UInt32.self) }
            return m
        }
        try f.shareAndMap()
        try f.startBackend()
        let pool = f.resources[0].pool.refs
        let slots = [rawRequest(.read, id: 0x1122_3344_5566_7788, sector: 8, grefs: [pool[0]], abi: .x86_32),
                     rawRequest(.read, id: 2, sector: 4096, grefs: [pool[1]], abi: .x86_32)]
        let responses = try await f.pushRaw(slots, abi: .x86_32)
        // Refusals are answered at once, reads after the engine: order by id.
        let byID = Dictionary(uniqueKeysWithValues: responses.map { ($0.id, $0.status) })
        #expect(byID == [0x1122_3344_5566_7788: .okay, 2: .error])
        #expect(f.resources[0].pool.memory.page(0).load(as: UInt32.self) == 0xFEED_F00D)
        #expect(try f.teardown().isEmpty)
    }

    @Test func aProducerFarAheadStopsThatRingAndAnotherKeepsWorking() async throws {
        let bytes = 4 << 20
        let failures = Locked<[Int]>([])
        let f = try BlockFixture(queues: 2, limits: BlockDeviceLimits(sectors: UInt64(bytes / 512))) { _ in
            try MemoryStorage(byteCount: bytes)
        }
        try f.shareAndMap()
        try f.startBackend { i, _ in failures.withLock { $0.append(i) } }
        // Queue 1 serves an honest frontend; queue 0 gets a req_prod 1000 entries ahead.
        try f.frontend.attach([f.resources[1]], info: f.info)
        let header = SharedRingHeader(f.resources[0].ring.memory.base)
        header.requestProducer.store(1000, ordering: .releasing)
        try f.resources[0].events.notify(f.resources[0].port)
        let stopped = await eventually { failures.withLock { $0 } == [0] }
        #expect(stopped)
        #expect((f.backends[0].queue.failure as? RingError)?.code == .requestProducerOverflow)
        try await withTimeout(20) { try await shadowWorkout(f.frontend, deviceBytes: bytes, operations: 10, maxBytes: 64 << 10) }
        #expect(f.backends[1].queue.failure == nil)
        // The other half of the frontend is not attached: release its ring by hand.
        #expect(try f.teardown().isEmpty)
    }

    /// A barrier after writes is answered after them (it waits for the engine to drain),
    /// and the data written before it is on disk.
    @Test(arguments: FileEngineKind.allCases)
    func aWriteBarrierWaitsForEarlierWrites(_ engine: FileEngineKind) async throws {
        // libaio: its flush completes at submit, ahead of writes still in the kernel, so
        // without the barrier's wait its answer would overtake theirs. io_uring runs the
        // fdatasync alongside the writes: the same wait must hold.
        let image = try TemporaryImage(bytes: 1 << 20)
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048, flush: true, barrier: true)) { _ in
            try image.storage(engine: engine)
        }
        try f.shareAndMap()
        try f.startBackend()
        let pool = f.resources[0].pool.refs
        for k in 0..<8 { f.resources[0].pool.memory.page(k).initializeMemory(as: UInt8.self, repeating: UInt8(k + 1), count: 4096) }
        var slots = (0..<8).map { k in rawRequest(.write, id: UInt64(k), sector: UInt64(k * 8), grefs: [pool[k]]) }
        slots.append(BlockRequest(id: 50, operation: .writeBarrier(sector: 0, segments: BlockSegments())).encoded())
        slots.append(rawRequest(.read, id: 51, sector: 0, grefs: Array(pool[8..<16])))
        let responses = try await f.pushRaw(slots)
        #expect(responses.allSatisfy { $0.status == .okay })
        let order = responses.map(\.id)
        let barrier = try #require(order.firstIndex(of: 50))
        #expect(Set(order[..<barrier]) == Set(0..<8))  // every earlier write answered before the barrier
        for k in 0..<8 { #expect(f.resources[0].pool.memory.page(8 + k).load(as: UInt8.self) == UInt8(k + 1)) }
        #expect(try f.teardown().isEmpty)
    }
}

struct X32Slot: BitwiseCopyable { var words: InlineArray<27, UInt32> }
struct X32Response: BitwiseCopyable { var words: InlineArray<3, UInt32> }

/// Stopping a queue whose frontend keeps its ring full: stop is honoured on every turn,
/// not only when the thread sleeps, so it returns; and the ring is unmapped only after
/// the thread is gone.
@Suite(.timeLimit(.minutes(5)))
struct BlockFloodedStopTests {
    /// Grant copy, and persistent mappings (which the thread unmaps itself on its way out).
    @Test(arguments: [0, 1056])
    func stopReturnsUnderAFloodAndTheRingIsUnmappedAfterTheThreadExited(persistentGrants: Int) async throws {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048), persistentGrants: persistentGrants) { _ in
            try MemoryStorage(byteCount: 1 << 20)
        }
        try f.shareAndMap()
        try f.startBackend()
        let flood = try ringFlooder(f.resources[0])
        flood.start()
        let queue = f.backends[0].queue
        // Several rings' worth answered: the flood is on and the queue is serving it.
        await flood.answered(8 * queue.ringSize)
        let ring = f.backends[0].ringMap.handle
        let atUnmap = Locked<[DriverRuntime.State]>([])
        f.mapper.onUnmap { m in if m.handle == ring { atUnmap.withLock { $0.append(queue.threadState) } } }
        await queue.stopped()
        #expect(atUnmap.withLock { $0 } == [.joined])
        #expect(queue.failure == nil)
        // The statistics publisher may still ask: the answer no longer reads the unmapped ring.
        #expect(queue.ringFill == 0)
        #expect(await flood.stop(), "the flooding thread did not end")
        f.mapper.onUnmap(nil)
        #expect(try f.teardown().isEmpty)
    }
}
