import Foundation
import TestSupport
import Testing
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenLocks
import XenSimulator

@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockDataPathTests {
    @Test func randomReadsAndWritesMatchAShadowCopyOnMemory() async throws {
        let bytes = 8 << 20
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 256)) { _ in
            try MemoryStorage(byteCount: bytes, alignment: 512)
        }
        try f.start()
        try await withTimeout(30) { try await shadowWorkout(f.frontend, deviceBytes: bytes, operations: 40) }
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}

/// The same data with each feature on and off, on a real file through libaio (and io_uring).
/// One case at a time: each brings up to eight queue threads that poll before they sleep,
/// and eleven at once on two cores starve each other (and every other suite).
@Suite(.timeLimit(.minutes(10)), .serialized)
struct BlockFeatureMatrixTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var indirect: Int
        var order: Int
        var queues: Int
        /// blkback's persistent-grant mappings (0: grant copy).
        var persistent = 0
        /// Requests of several pages copied through contiguous bounce pages anyway.
        var contiguousCopies = false
        /// The engine on the file.
        var engine = FileEngineKind.libaio
        var testDescription: String {
            "indirect \(indirect), ring-page-order \(order), \(queues) queue(s), "
                + (persistent > 0 ? "\(persistent) persistent grants" : "grant copy")
                + (contiguousCopies ? ", contiguous copies" : "") + ", \(engine)"
        }
    }

    @Test(arguments: [
        Case(indirect: 0, order: 0, queues: 1), Case(indirect: 256, order: 0, queues: 1),
        Case(indirect: 0, order: 2, queues: 2), Case(indirect: 256, order: 2, queues: 4),
        Case(indirect: 64, order: 1, queues: 2),
        Case(indirect: 256, order: 0, queues: 1, persistent: 1056), Case(indirect: 0, order: 2, queues: 2, persistent: 1056),
        // Fewer mappings than the pool has pages: the least recently used go.
        Case(indirect: 0, order: 0, queues: 1, persistent: 16),
        // Larger requests copied between the mappings and contiguous bounce pages.
        Case(indirect: 256, order: 0, queues: 2, persistent: 1056, contiguousCopies: true),
        // The same over io_uring: grant copy, and mappings with contiguous copies on several queues,
        // and a small cache whose runs are registered with the ring and unregistered as they go.
        Case(indirect: 0, order: 0, queues: 1, engine: .ioUring),
        Case(indirect: 256, order: 2, queues: 2, persistent: 1056, contiguousCopies: true, engine: .ioUring),
        Case(indirect: 0, order: 0, queues: 1, persistent: 16, engine: .ioUring),
    ])
    func sameDataOnAFile(_ c: Case) async throws {
        let bytes = 8 << 20
        let image = try TemporaryImage(bytes: bytes)
        let rings = Locked<[UringStorage]>([])
        let f = try BlockFixture(queues: c.queues, ringPageOrder: c.order,
                                 limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: c.indirect),
                                 persistentGrants: c.persistent, contiguousCopies: c.contiguousCopies) { _ in
            let engine = try image.storage(engine: c.engine)
            if let ring = engine as? UringStorage { rings.withLock { $0.append(ring) } }
            return engine
        }
        try f.start()
        try await withTimeout(30) { try await shadowWorkout(f.frontend, deviceBytes: bytes, operations: 16, seed: UInt64(c.queues * 10 + c.order)) }
        // Each queue carried requests.
        #expect(f.backends.allSatisfy { $0.queue.counters.requests.value > 0 } || c.queues == 1)
        for b in f.backends {
            let (maps, evictions) = (b.queue.counters.grantMaps.value, b.queue.counters.grantEvictions.value)
            if c.persistent == 0 {
                #expect(maps == 0)
            } else {
                #expect(maps > 0 && maps - evictions <= UInt64(c.persistent))
                #expect(c.persistent > 16 || evictions > 0, "a 16-entry cache over a 512-page pool evicts")
            }
        }
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
        // Bounce pages and persistent-grant runs are registered buffers of the ring: the data
        // above went through fixed-buffer reads and writes. (Read after the threads stopped.)
        #expect(rings.withLock { $0.count } == (c.engine == .ioUring ? c.queues : 0))
        #expect(rings.withLock { $0.allSatisfy { $0.fixedBufferOperations > 0 } })
    }
}

@Suite(.timeLimit(.minutes(5)))
struct BlockOperationTests {
    /// On memory (nil) and on a file through each file engine.
    @Test(arguments: [nil, FileEngineKind.libaio, .ioUring])
    func flushThenDiscardReadsBackZeros(onFile: FileEngineKind?) async throws {
        let bytes = 4 << 20
        let image = try TemporaryImage(bytes: bytes)
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), flush: true, discard: true, maxIndirectSegments: 32)) { _ in
            if let onFile { try image.storage(engine: onFile) } else { try MemoryStorage(byteCount: bytes, alignment: 512) }
        }
        try f.start()
        let fe = f.frontend
        try await withTimeout(20) {
            let data = [UInt8](repeating: 0xA5, count: 256 << 10)
            try await fe.write(at: 1 << 20, data)
            try await fe.flush()
            #expect(try await fe.read(at: 1 << 20, count: data.count) == data)
            try await fe.discard(at: (1 << 20) + 65536, length: 65536)
            let back = try await fe.read(at: 1 << 20, count: data.count)
            #expect(back[65536..<131072].allSatisfy { $0 == 0 })
            #expect(back[0..<65536].allSatisfy { $0 == 0xA5 })
            #expect(back[131072...].allSatisfy { $0 == 0xA5 })
        }
        #expect(try f.teardown().isEmpty)
    }

    /// Reads in place see the same bytes as the writes put there, each byte once, for part
    /// of a page, a few pages, and reads spread over several ring requests and two queues;
    /// a refused read consumes nothing.
    @Test func readsInPlaceSeeEachByteOnce() async throws {
        let bytes = 4 << 20
        let image = try TemporaryImage(bytes: bytes)  // one file for both queues
        let f = try BlockFixture(queues: 2, limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 32),
                                 persistentGrants: 1056) { _ in try image.storage() }
        try f.start()
        let fe = f.frontend
        try await withTimeout(20) {
            let base = 3 * 512
            let data = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
            try await fe.write(at: UInt64(base), data)
            for (at, count) in [(base, 512), (base, 6 << 10), (base + 4096, 300 << 10), (base, 1 << 20)] {
                let seen = Locked<(bytes: [UInt8], count: Int)>((Array(repeating: 0, count: count), 0))
                try await fe.read(at: UInt64(at), count: count) { offset, piece in
                    seen.withLock { s in
                        s.bytes.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: offset).copyMemory(from: piece.baseAddress!, byteCount: piece.count) }
                        s.count += piece.count
                    }
                }
                let (got, consumed) = seen.withLock { ($0.bytes, $0.count) }
                #expect(consumed == count, "\(count) bytes at \(at)")
                // Compared by hand: a failing #expect on a megabyte diffs it for minutes.
                let want = data[(at - base)..<(at - base + count)]
                let wrong = got.indices.first { got[$0] != want[want.startIndex + $0] }
                #expect(wrong == nil, "\(count) bytes at \(at): first wrong byte \(wrong ?? -1)")
            }
            await #expect(throws: BlockFrontError.self) {
                try await fe.read(at: UInt64(bytes), count: 512) { _, _ in Issue.record("a refused read consumed a piece") }
            }
            await #expect(throws: BlockFrontError.self) {
                try await fe.read(at: 0, count: -512) { _, _ in Issue.record("a negative count consumed a piece") }
            }
            await #expect(throws: BlockFrontError.self) { _ = try await fe.read(at: 0, count: -1) }
        }
        #expect(try f.teardown().isEmpty)
    }

    /// More callers than ring slots, and requests larger than the free pool: callers
    /// wait, nothing is dropped, every call completes with its own data.
    @Test func callersWaitWhenTheRingOrThePoolIsFull() async throws {
        let bytes = 64 << 20
        let f = try BlockFixture.inMemory(bytes: bytes)
        try f.shareAndMap(poolPages: 64)  // two 128 KiB requests in flight at most
        try f.startBackend()
        try f.frontend.attach(f.resources, info: f.info)
        let fe = f.frontend
        try await withTimeout(30) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<200 {  // 200 callers on a 32-slot ring
                    group.addTask {
                        let size = i % 10 == 0 ? 256 << 10 : 4096
                        let at = UInt64(i) * (256 << 10)
                        let data = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: size)
                        try await fe.write(at: at, data)
                        let back = try await fe.read(at: at, count: size)
                        if back != data { throw ShadowMismatch(offset: Int(at), length: size) }
                    }
                }
                try await group.waitForAll()
            }
        }
        #expect(try f.teardown().isEmpty)
    }

    @Test func misalignedAndOutOfRangeCallsGetClearErrors() async throws {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048)) { _ in try MemoryStorage(byteCount: 1 << 20) }
        try f.start()
        let fe = f.frontend
        try await withTimeout(20) {
            await #expect(throws: BlockFrontError(.misaligned, "offset 100 and length 512 must be multiples of 512 bytes")) {
                try await fe.write(at: 100, [UInt8](repeating: 1, count: 512))
            }
            do {
                _ = try await fe.read(at: 0, count: 1000)
                Issue.record("a 1000-byte read was accepted")
            } catch let error as BlockFrontError { #expect(error.code == .misaligned) }
            do {
                _ = try await fe.read(at: 1 << 20, count: 512)
                Issue.record("a read past the end was accepted")
            } catch let error as BlockFrontError { #expect(error.code == .outOfRange) }
        }
        #expect(try f.teardown().isEmpty)
    }

    @Test(arguments: FileEngineKind.allCases)
    func aReadOnlyDeviceRefusesWritesAtBothEnds(_ engine: FileEngineKind) async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let limits = BlockDeviceLimits(sectors: 2048, readOnly: true)
        let f = try BlockFixture(limits: limits) { _ in try image.storage(readOnly: true, engine: engine) }
        try f.shareAndMap()
        try f.startBackend()
        // The frontend is told read-write, so the write reaches the backend, which refuses it.
        var info = f.info
        info.readOnly = false
        try f.frontend.attach(f.resources, info: info)
        let fe = f.frontend
        try await withTimeout(20) {
            do {
                try await fe.write(at: 0, [UInt8](repeating: 1, count: 4096))
                Issue.record("write to a read-only device succeeded")
            } catch let error as BlockFrontError { #expect(error.code == .ioError) }
            #expect(try await fe.read(at: 0, count: 4096) == [UInt8](repeating: 0, count: 4096))
        }
        #expect(f.backends[0].queue.counters.refused.value == 1)
        #expect(try f.teardown().isEmpty)

        // A frontend that knows refuses on its own.
        let g = try BlockFixture(limits: limits) { _ in try MemoryStorage(byteCount: 1 << 20, readOnly: true) }
        try g.start()
        let ge = g.frontend
        try await withTimeout(20) {
            do {
                try await ge.write(at: 0, [UInt8](repeating: 1, count: 512))
                Issue.record("write accepted")
            } catch let error as BlockFrontError { #expect(error.code == .readOnly) }
        }
        #expect(try g.teardown().isEmpty)
    }

    @Test func anOperationTheBackendDoesNotOfferIsNotSupported() async throws {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048, flush: true, discard: false)) { _ in
            try MemoryStorage(byteCount: 1 << 20)
        }
        try f.shareAndMap()
        try f.startBackend()
        var info = f.info
        info.discard = true  // lie to the frontend so the request reaches the backend
        try f.frontend.attach(f.resources, info: info)
        let fe = f.frontend
        try await withTimeout(20) {
            do {
                try await fe.discard(at: 0, length: 4096)
                Issue.record("discard accepted")
            } catch let error as BlockFrontError { #expect(error.code == .notSupported) }
            try await fe.write(at: 0, [UInt8](repeating: 7, count: 512))
        }
        #expect(try f.teardown().isEmpty)
    }

    @Test func aStorageFailureFailsOnlyThatRequest() async throws {
        let bytes = 1 << 20
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: UInt64(bytes / 512))) { _ in
            FaultInjectingStorage(try MemoryStorage(byteCount: bytes), faults: [.overlapping(65536..<69632)])
        }
        try f.start()
        let fe = f.frontend
        try await withTimeout(20) {
            try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
                for i in 0..<32 {
                    group.addTask {
                        do {
                            try await fe.write(at: UInt64(i * 4096), [UInt8](repeating: UInt8(i), count: 4096))
                            return (i, true)
                        } catch let error as BlockFrontError {
                            #expect(error.code == .ioError)
                            return (i, false)
                        }
                    }
                }
                var failed: [Int] = []
                for try await (i, ok) in group where !ok { failed.append(i) }
                #expect(failed == [16])
            }
            // Reads of the bad range fail too; every other block holds its data.
            for i in 0..<32 where i != 16 {
                let back = try await fe.read(at: UInt64(i * 4096), count: 4096)
                #expect(back.allSatisfy { $0 == UInt8(i) })
            }
            do {
                _ = try await fe.read(at: 16 * 4096, count: 512)
                Issue.record("read of the failing range succeeded")
            } catch let error as BlockFrontError { #expect(error.code == .ioError) }
        }
        #expect(f.backends[0].queue.counters.storageErrors.value == 2)
        #expect(try f.teardown().isEmpty)
    }
}
