import Foundation
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenLocks

/// How blkback gets a request's data to the engine: persistent grants mapped in runs,
/// adjacent pages joined into one buffer, and multi-page requests copied through
/// contiguous bounce pages when the engine prefers that.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockBufferTests {
    /// One queue on a 1 MiB memory disk with `capacity` persistent grants (11 segments
    /// per request at most, so a capacity of 16 holds one request and a bit).
    private func rawFixture(capacity: Int) throws -> (BlockFixture, MemoryStorage) {
        let storage = try MemoryStorage(byteCount: 1 << 20)
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048), persistentGrants: capacity) { _ in storage }
        try f.shareAndMap()
        try f.startBackend()
        for p in 0..<32 {
            f.resources[0].pool.memory.page(p).initializeMemory(as: UInt8.self, repeating: UInt8(p + 1), count: XenPage.size)
        }
        return (f, storage)
    }

    /// One queue on a 4 MiB disk, indirect requests up to 128 KiB, 1056 persistent
    /// grants, the frontend attached.
    private func attachedFixture(_ storage: @escaping () throws -> any StorageEngine) throws -> BlockFixture {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64((4 << 20) / 512), maxIndirectSegments: 32),
                                 persistentGrants: 1056) { _ in try storage() }
        try f.start()
        return f
    }

    /// The fill byte of each 4 KiB page of the disk from `sector` on.
    private func pages(_ storage: MemoryStorage, sector: Int, count: Int) -> [UInt8] {
        storage.withContents { disk in
            (0..<count).map { p in
                let page = disk[(sector * 512 + p * XenPage.size)..<(sector * 512 + (p + 1) * XenPage.size)]
                return page.allSatisfy { $0 == page.first } ? page.first! : 0
            }
        }
    }

    private func counters(_ f: BlockFixture) -> (maps: UInt64, evictions: UInt64, buffers: UInt64) {
        let c = f.backends[0].queue.counters
        return (c.grantMaps.value, c.grantEvictions.value, c.buffers.value)
    }

    @Test func aRequestsNewGrantsAreMappedAsOneRunAndGoToTheEngineAsOneBuffer() async throws {
        let (f, storage) = try rawFixture(capacity: 1056)
        let pool = f.resources[0].pool.refs
        let first = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: Array(pool[0..<8]))])
        #expect(first.map(\.status) == [.okay])
        #expect(counters(f) == (8, 0, 1))
        // The same grants again: no new mapping, still one buffer.
        let again = try await f.pushRaw([rawRequest(.write, id: 2, sector: 64, grefs: Array(pool[0..<8]))])
        #expect(again.map(\.status) == [.okay])
        #expect(counters(f) == (8, 0, 2))
        #expect(pages(storage, sector: 0, count: 8) == Array(1...8))
        #expect(pages(storage, sector: 64, count: 8) == Array(1...8))
        #expect(try f.teardown().isEmpty)
    }

    @Test func aRequestWhoseGrantsDoNotFitWaitsForTheOneInFlight() async throws {
        let (f, storage) = try rawFixture(capacity: 16)
        let pool = f.resources[0].pool.refs
        // Taken off the ring together: the second needs 11 new mappings, 5 are free,
        // and the first's run is in flight.
        let responses = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: Array(pool[0..<11])),
                                       rawRequest(.write, id: 2, sector: 128, grefs: Array(pool[11..<22]))])
        #expect(responses.map(\.status) == [.okay, .okay])
        #expect(counters(f).maps == 22 && counters(f).evictions == 11)
        #expect(pages(storage, sector: 0, count: 11) == Array(1...11))
        #expect(pages(storage, sector: 128, count: 11) == Array(12...22))
        #expect(try f.teardown().isEmpty)
    }

    @Test func aRequestWhoseOwnRunFillsTheCacheStartsItAfresh() async throws {
        let (f, storage) = try rawFixture(capacity: 16)
        let pool = f.resources[0].pool.refs
        _ = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: Array(pool[0..<11]))])
        // One grant of the mapped run and ten new ones: the run cannot go while this
        // request uses it, and nothing else will free room.
        let responses = try await f.pushRaw([rawRequest(.write, id: 2, sector: 128, grefs: [pool[0]] + Array(pool[11..<21]))])
        #expect(responses.map(\.status) == [.okay])
        #expect(counters(f).maps == 22 && counters(f).evictions == 11)
        #expect(pages(storage, sector: 128, count: 11) == [1] + Array(12...21))
        #expect(try f.teardown().isEmpty)
    }

    @Test func aGrantTwiceInOneRequestIsMappedOnce() async throws {
        let (f, storage) = try rawFixture(capacity: 1056)
        let pool = f.resources[0].pool.refs
        let responses = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: [pool[5], pool[5], pool[6]])])
        #expect(responses.map(\.status) == [.okay])
        #expect(counters(f).maps == 2)
        #expect(pages(storage, sector: 0, count: 3) == [6, 6, 7])
        #expect(try f.teardown().isEmpty)
    }

    @Test func aBadGrantAmongNewOnesMapsNothing() async throws {
        let (f, _) = try rawFixture(capacity: 1056)
        let pool = f.resources[0].pool.refs
        let responses = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: [pool[0], GrantRef(0xdead)]),
                                       rawRequest(.write, id: 2, sector: 0, grefs: [pool[0], pool[1]])])
        #expect(responses.map(\.status) == [.error, .okay])
        #expect(counters(f).maps == 2)
        #expect(f.backends[0].queue.counters.badGrants.value == 1)
        #expect(try f.teardown().isEmpty)
    }

    /// Our frontend gives a request's pages back last first, so the next request of the
    /// same size takes the same pages in the same order: one buffer per request, every time.
    @Test func theFrontendsRequestsReachTheEngineAsOneBufferEach() async throws {
        let f = try attachedFixture { try MemoryStorage(byteCount: 4 << 20) }
        let fe = f.frontend
        try await withTimeout(20) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<4 {
                    group.addTask {
                        for i in 0..<8 {
                            let at = UInt64((worker * 8 + i) * (128 << 10))
                            let data = [UInt8](repeating: UInt8(worker * 8 + i), count: 128 << 10)
                            try await fe.write(at: at, data)
                            if try await fe.read(at: at, count: data.count) != data { throw ShadowMismatch(offset: Int(at), length: data.count) }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        let c = f.backends[0].queue.counters
        #expect(c.requests.value == 64)
        #expect(c.buffers.value == c.requests.value)
        #expect(c.grantMaps.value <= 4 * 32, "four callers' pages, each mapped once")
        #expect(try f.teardown().isEmpty)
    }

    @Test func anEngineThatPrefersContiguousBuffersGetsMultiPageRequestsCopied() async throws {
        let f = try attachedFixture { try ContiguousMemoryStorage(byteCount: 4 << 20) }
        let fe = f.frontend
        try await withTimeout(20) {
            for i in 0..<8 {
                let at = UInt64(i * (128 << 10))
                let data = (0..<(128 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
                try await fe.write(at: at, data)
                #expect(try await fe.read(at: at, count: data.count) == data)
            }
        }
        let c = f.backends[0].queue.counters
        #expect(c.bouncedSegments.value == c.segments.value, "128 KiB requests go through bounce pages")
        #expect(c.grantMaps.value > 0, "copied from and to the persistent mappings")
        #expect(c.buffers.value == c.requests.value, "adjacent bounce pages make one buffer")
        // A single page still goes straight through its mapping.
        let bounced = c.bouncedSegments.value
        try await withTimeout(20) { try await fe.write(at: 0, [UInt8](repeating: 9, count: 4096)) }
        #expect(c.bouncedSegments.value == bounced)
        #expect(try f.teardown().isEmpty)
    }
}

/// A memory disk that asks for contiguous buffers, as `O_DIRECT` libaio does.
final class ContiguousMemoryStorage: ForwardingStorage, @unchecked Sendable {
    let inner: any StorageEngine
    init(byteCount: Int) throws { inner = try MemoryStorage(byteCount: byteCount) }
    var prefersContiguousBuffers: Bool { true }
}

/// An engine that takes registrations as io_uring does (an id per region, refusing
/// none) and counts the read and write buffers it is handed inside a live region and
/// outside every one.
final class RegisteringStorage: ForwardingStorage, @unchecked Sendable {
    // @unchecked: the state is under its lock; the queue thread calls, the test reads.
    struct State {
        var live: [Int: UnsafeMutableRawBufferPointer] = [:]
        var next = 0
        var inside = 0
        var outside = 0
        var unknownUnregistrations = 0
    }
    let inner: any StorageEngine
    let state = Locked(State())

    init(_ inner: any StorageEngine) { self.inner = inner }

    func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int? {
        state.withLock { s in
            s.next += 1
            s.live[s.next] = memory
            return s.next
        }
    }

    func unregisterBuffer(_ registration: Int) {
        state.withLock { s in
            if s.live.removeValue(forKey: registration) == nil { s.unknownUnregistrations += 1 }
        }
    }

    func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        state.withLock { s in
            for op in operations {
                guard let buffers = op.buffers else { continue }
                for i in 0..<op.bufferCount {
                    let start = UInt(bitPattern: buffers[i].iov_base), end = start + UInt(buffers[i].iov_len)
                    let held = s.live.values.contains { region in
                        let base = UInt(bitPattern: region.baseAddress)
                        return base <= start && end <= base + UInt(region.count)
                    }
                    if held { s.inside += 1 } else { s.outside += 1 }
                }
            }
        }
        return try inner.submit(operations)
    }
}

extension BlockBufferTests {
    /// blkback registers its bounce pages and each persistent-grant run with the engine
    /// (io_uring pins them once), hands the engine buffers inside them, and unregisters a
    /// run when it unmaps it: no registration outlives its mapping.
    @Test func persistentGrantRunsAndBouncePagesAreRegisteredWithTheEngine() async throws {
        let storage = RegisteringStorage(try MemoryStorage(byteCount: 1 << 20))
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048), persistentGrants: 16) { _ in storage }
        try f.shareAndMap()
        try f.startBackend()
        let bounce = try #require(storage.state.withLock { $0.live.keys.first })
        #expect(storage.state.withLock { $0.live.count } == 1, "the bounce pages, from the start")
        let pool = f.resources[0].pool.refs
        let first = try await f.pushRaw([rawRequest(.write, id: 1, sector: 0, grefs: Array(pool[0..<11]))])
        #expect(first.map(\.status) == [.okay])
        let afterFirst = storage.state.withLock { $0 }
        #expect(afterFirst.live.count == 2 && afterFirst.inside == 1 && afterFirst.outside == 0)
        let firstRun = try #require(afterFirst.live.keys.first { $0 != bounce })
        #expect(afterFirst.live[firstRun]?.count == 11 * XenPage.size)
        // Eleven new grants and room for five: the first run is unmapped, and unregistered.
        let second = try await f.pushRaw([rawRequest(.read, id: 2, sector: 128, grefs: Array(pool[11..<22]))])
        #expect(second.map(\.status) == [.okay])
        let afterSecond = storage.state.withLock { $0 }
        #expect(f.backends[0].queue.counters.grantEvictions.value == 11)
        #expect(afterSecond.live[firstRun] == nil && afterSecond.live.count == 2)
        #expect(afterSecond.inside == 2 && afterSecond.outside == 0 && afterSecond.unknownUnregistrations == 0)
        #expect(try f.teardown().isEmpty)
        // Stopped: every run unmapped and unregistered (the bounce pages are, when the queue goes).
        #expect(storage.state.withLock { $0.live.keys.allSatisfy { $0 == bounce } && $0.unknownUnregistrations == 0 })
    }
}
