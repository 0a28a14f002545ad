import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// The behaviour every engine shares, run against each engine.
enum Conformance {
    /// Random batches of multi-buffer reads and writes, checked against a shadow copy;
    /// flushes in between; discards read back as zeros.
    static func randomIO(_ engine: any StorageEngine, seed: UInt64, rounds: Int = 6, batch: Int = 24) throws {
        let size = Int(engine.byteCount)
        let unit = max(engine.alignment, 512)
        var shadow = [UInt8](repeating: 0, count: size)
        // Start from what the engine holds.
        var driver = Driver(engine)
        let seedBuf = Buffers(byteCount: size, iovecCount: 1)
        _ = try driver.run([.read(tag: 0, offset: 0, buffers: seedBuf.vector(first: 0, at: 0, pieces: [size]))])
        shadow = Array(seedBuf.bytes)

        var rng = SplitMix(seed: seed)
        for round in 0..<rounds {
            let buffers = Buffers(byteCount: batch * 64 * 1024, iovecCount: batch * 8)
            var ops: [StorageOperation] = []
            var expectations: [(tag: UInt64, offset: Int, at: Int, length: Int, isRead: Bool)] = []
            var claimed: [Range<Int>] = []  // operations in one batch may run in any order: keep writes disjoint
            for i in 0..<batch {
                let tag = UInt64(round * 1000 + i + 1)
                let blocks = Int.random(in: 1...(64 * 1024 / unit), using: &rng)
                let length = blocks * unit
                let offset = Int.random(in: 0...(size - length) / unit, using: &rng) * unit
                let range = offset..<offset + length
                if claimed.contains(where: { $0.overlaps(range) }) { continue }
                claimed.append(range)
                let at = i * 64 * 1024
                // Split into 1...4 buffers on unit boundaries.
                var pieces: [Int] = []
                var left = blocks
                while left > 0 {
                    let take = pieces.count == 3 ? left : Int.random(in: 1...left, using: &rng)
                    pieces.append(take * unit)
                    left -= take
                }
                let iov = buffers.vector(first: i * 8, at: at, pieces: pieces)
                switch Int.random(in: 0..<10, using: &rng) {
                case 0..<4:
                    ops.append(.read(tag: tag, offset: UInt64(offset), buffers: iov))
                    expectations.append((tag, offset, at, length, true))
                case 4..<9:
                    for j in 0..<length { buffers.bytes[at + j] = UInt8.random(in: 0...255, using: &rng) }
                    ops.append(.write(tag: tag, offset: UInt64(offset), buffers: iov))
                    expectations.append((tag, offset, at, length, false))
                    shadow.replaceSubrange(offset..<offset + length, with: buffers.bytes[at..<at + length])
                default:
                    ops.append(.discard(tag: tag, offset: UInt64(offset), length: UInt64(length)))
                    expectations.append((tag, offset, at, 0, false))
                    shadow.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
                }
            }
            // A read in the same batch as an overlapping write could see either; reads here
            // never overlap writes (claimed ranges), so each read sees the previous round's state.
            let before = shadow
            ops.append(.flush(tag: UInt64(round * 1000 + 999)))
            let results = try driver.run(ops)
            #expect(results.count == ops.count)
            for (tag, c) in results {
                #expect(c.succeeded, "tag \(tag): \(String(describing: c.error))")
            }
            for e in expectations where e.isRead {
                #expect(Array(buffers.bytes[e.at..<e.at + e.length]) == Array(before[e.offset..<e.offset + e.length]),
                        "read tag \(e.tag) at \(e.offset) differs from the shadow")
                if case .success(let n) = results[e.tag]?.outcome { #expect(n == e.length) }
            }
        }
        // Finally the whole disk equals the shadow.
        let check = Buffers(byteCount: size, iovecCount: 1)
        let r = try driver.run([.read(tag: 1, offset: 0, buffers: check.vector(first: 0, at: 0, pieces: [size]))])
        #expect(r[1]?.succeeded == true)
        #expect(Array(check.bytes) == shadow, "disk differs from the shadow copy")
    }

    /// Refusals: each fails alone, through its completion, with the right code.
    static func refusals(_ engine: any StorageEngine) throws {
        let a = max(engine.alignment, 1)
        let buffers = Buffers(byteCount: 3 * 4096, iovecCount: 8)
        let size = engine.byteCount
        var ops: [StorageOperation] = [
            .read(tag: 1, offset: size - 4096, buffers: buffers.vector(first: 0, at: 0, pieces: [8192])),   // past the end
            .read(tag: 2, offset: .max - 511, buffers: buffers.vector(first: 1, at: 0, pieces: [4096])),    // wraps
            .discard(tag: 3, offset: size, length: 1),
            .read(tag: 4, offset: 0, buffers: buffers.vector(first: 2, at: 0, pieces: [4096])),             // fine
            StorageOperation(kind: .write, tag: 5, offset: 0),                                              // no buffers
        ]
        if a > 1 {
            ops.append(.read(tag: 6, offset: 0, buffers: buffers.vector(first: 3, at: 1, pieces: [4096])))     // address
            ops.append(.read(tag: 7, offset: UInt64(a / 2), buffers: buffers.vector(first: 4, at: 0, pieces: [4096])))  // offset
            ops.append(.read(tag: 8, offset: 0, buffers: buffers.vector(first: 5, at: 0, pieces: [a + a / 2]))) // length
        }
        let many = Buffers(byteCount: 4096, iovecCount: StorageOperation.maxBuffers + 1)
        let tooMany = many.vector(first: 0, at: 0, pieces: Array(repeating: 0, count: StorageOperation.maxBuffers + 1))
        tooMany[0].iov_len = 4096
        ops.append(.read(tag: 9, offset: 0, buffers: tooMany))
        var driver = Driver(engine)
        let r = try driver.run(ops)
        #expect(r[9]?.error?.code == .outOfRange && r[9]?.error?.message.contains("IOV_MAX") == true)
        #expect(r[1]?.error?.code == .outOfRange)
        #expect(r[2]?.error?.code == .outOfRange)
        #expect(r[3]?.error?.code == .outOfRange)
        #expect(r[4]?.succeeded == true)
        #expect(r[5]?.error?.code == .outOfRange)
        if a > 1 {
            for t: UInt64 in [6, 7, 8] {
                #expect(r[t]?.error?.code == .misaligned, "tag \(t)")
                #expect(r[t]?.error?.message.contains("O_DIRECT") == true)
            }
        }
    }

    /// A read-only engine: a write and a discard each fail alone with `.readOnly`, a read
    /// (bytes 4096..<8192 of the device, into the same bytes of the buffers) and a flush
    /// succeed. The buffers, for the caller to check what the read brought.
    static func readOnlyRefusals(_ engine: any StorageEngine) throws -> Buffers {
        let b = Buffers(byteCount: 8192, iovecCount: 4)
        var d = Driver(engine)
        let r = try d.run([
            .write(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096])),
            .discard(tag: 2, offset: 0, length: 4096),
            .read(tag: 3, offset: 4096, buffers: b.vector(first: 1, at: 4096, pieces: [4096])),
            .flush(tag: 4),
        ])
        #expect(r[1]?.error?.code == .readOnly)
        #expect(r[2]?.error?.code == .readOnly)
        #expect(r[3]?.succeeded == true && r[4]?.succeeded == true)
        return b
    }

    /// The queue depth bounds what is accepted; the rest waits for a reap (back-pressure).
    static func backPressure(_ engine: any StorageEngine) throws {
        let depth = engine.queueDepth
        let buffers = Buffers(byteCount: 4096, iovecCount: depth + 5)
        var ops: [StorageOperation] = []
        for i in 0..<(depth + 5) {
            ops.append(.read(tag: UInt64(i), offset: 0, buffers: buffers.vector(first: i, at: 0, pieces: [4096])))
        }
        let first = try ops.withUnsafeBufferPointer { try engine.submit($0) }
        #expect(first == depth)
        #expect(engine.outstanding == depth)
        let again = try ops[first...].withUnsafeBufferPointer { try engine.submit($0) }
        #expect(again == 0)
        var driver = Driver(engine)
        // Drain the accepted ones, then the rest goes through.
        var seen = 0
        let clock = ContinuousClock()
        let end = clock.now + .seconds(minimumDeadline)
        while seen < depth && clock.now < end {
            seen += try driver.completions.withUnsafeMutableBufferPointer { try engine.reap(into: $0, timeout: .milliseconds(100)) }
        }
        #expect(seen == depth)
        let rest = try driver.run(Array(ops[first...]))
        #expect(rest.count == 5)
    }

    /// A reap with nothing outstanding and a timeout returns, with nothing: one that ignored
    /// its timeout would wait forever for a completion that never comes. Called on a thread
    /// of the test's own (`onThread`); the reap runs on one more, awaited for at most
    /// `minimumDeadline`, so an engine that hangs fails the test instead of hanging the run.
    /// (How soon it returns is not asserted: on a busy machine that is the scheduler's say.)
    static func boundedIdleReap(_ engine: any StorageEngine) throws {
        let reaper = IdleReap(engine)
        Thread { reaper.run() }.start()
        guard let n = try reaper.result(within: minimumDeadline) else {
            Issue.record("an idle reap with a 50 ms timeout had not returned after \(minimumDeadline) s")
            return
        }
        #expect(n == 0)
        #expect(!Driver.waitReadable(engine.completionDescriptor, milliseconds: 0))
    }
}

/// One idle reap (50 ms timeout) on a thread of its own, and its answer, awaited with a bound.
private final class IdleReap: @unchecked Sendable {
    // @unchecked: `engine` is used by the reaping thread only until it signals `done`
    // (the caller touches it again only after); `answer` is written before that signal.
    private let engine: any StorageEngine
    private var answer: Result<Int, any Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ engine: any StorageEngine) { self.engine = engine }

    func run() {
        var out = [StorageCompletion](repeating: .empty, count: 4)
        answer = Result { try out.withUnsafeMutableBufferPointer { try engine.reap(into: $0, timeout: .milliseconds(50)) } }
        done.signal()
    }

    /// The reap's count, or nil if it had not returned after `seconds`; blocks the caller.
    func result(within seconds: Double) throws -> Int? {
        guard done.wait(timeout: .now() + seconds) == .success else { return nil }
        return try answer?.get()
    }
}
