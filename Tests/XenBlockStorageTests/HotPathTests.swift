import CMallocCounter
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// Steady-state submit and reap allocate nothing per operation.
@Suite(.timeLimit(.minutes(5)))
struct StorageHotPathTests {
    func countAllocations(_ engine: any StorageEngine, rounds: Int) throws -> UInt64 {
        let depth = 16
        let buffers = Buffers(byteCount: depth * 4096, iovecCount: depth)
        var ops = [StorageOperation]()
        ops.reserveCapacity(depth)
        for i in 0..<depth {
            let iov = buffers.vector(first: i, at: i * 4096, pieces: [4096])
            ops.append(i % 2 == 0 ? .read(tag: UInt64(i), offset: UInt64(i * 8192), buffers: iov)
                                  : .write(tag: UInt64(i), offset: UInt64(i * 8192), buffers: iov))
        }
        var completions = [StorageCompletion](repeating: .empty, count: depth)
        func cycle() throws -> Bool {
            let accepted = try ops.withUnsafeBufferPointer { try engine.submit($0) }
            var reaped = 0
            var spins = 0
            while reaped < accepted && spins < 10_000 {
                reaped += try completions.withUnsafeMutableBufferPointer { try engine.reap(into: $0, timeout: .milliseconds(100)) }
                spins += 1
            }
            return accepted == depth && reaped == depth
        }
        _ = try cycle()  // warm-up
        let before = cmalloc_count_this_thread()
        var ok = true
        for _ in 0..<rounds { ok = try cycle() && ok }
        let count = cmalloc_count_this_thread() - before
        #expect(ok)
        return count
    }

    // Each counts on a thread of its own (`onThread`): its reaps wait for the kernel, and
    // the count is that thread's.

    @Test func libaioSubmitAndReapDoNotAllocate() async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let n = try await onThread {
            let s = try LibaioStorage(path: image.filePath, queueDepth: 16)
            defer { s.close() }
            return try countAllocations(s, rounds: 100)
        }
        #expect(n == 0 || cmalloc_counting_enabled() == 0, "\(n) allocations for 1600 operations")
    }

    @Test func uringSubmitAndReapDoNotAllocate() async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let n = try await onThread {
            let s = try UringStorage(path: image.filePath, queueDepth: 16)
            defer { s.close() }
            return try countAllocations(s, rounds: 100)
        }
        #expect(n == 0 || cmalloc_counting_enabled() == 0, "\(n) allocations for 1600 operations")
    }

    @Test func memorySubmitAndReapDoNotAllocate() async throws {
        let n = try await onThread {
            let m = try MemoryStorage(byteCount: 1 << 20, queueDepth: 16)
            return try countAllocations(m, rounds: 100)
        }
        #expect(n == 0 || cmalloc_counting_enabled() == 0, "\(n) allocations for 1600 operations")
    }
}
