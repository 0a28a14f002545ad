import Foundation
import Glibc
import NBDProtocol
import TestSupport
import Testing
@testable import XenBlockStorage

/// The NBD engine across a server killed (SIGKILL) mid-stream and started again on the
/// same socket: nbdkit's file and memory plugins, qemu-nbd, nbd-server. Every write of
/// the stream must complete, and what the export holds afterwards must be what was
/// written; requests the dead server never answered are re-sent on the new connection.
@Suite(.enabled(if: nbdServersInstalled), .timeLimit(.minutes(5)))
struct NBDReconnectTests {
    static let blockSize = 4096
    static let blockCount = 2048  // 8 MiB

    @Test func nbdkitFileKilledAndRestartedLosesNothing() async throws {
        let image = try TemporaryImage(bytes: Self.blockCount * Self.blockSize)
        let server = try await NBDServerProcess.nbdkit(["file", image.path])
        try await withCleanup {
            try await Self.killAndRestartMidStream(server, image: image, seed: 1)
        } cleanup: {
            await server.stop()
        }
    }

    @Test func qemuNBDKilledAndRestartedLosesNothing() async throws {
        let image = try TemporaryImage(bytes: Self.blockCount * Self.blockSize)
        let server = try await NBDServerProcess.qemuNBD(image: image.path)
        try await withCleanup {
            try await Self.killAndRestartMidStream(server, image: image, seed: 2)
        } cleanup: {
            await server.stop()
        }
    }

    @Test(.enabled(if: nbdServerInstalled)) func nbdServerKilledAndRestartedLosesNothing() async throws {
        let image = try TemporaryImage(bytes: Self.blockCount * Self.blockSize)
        let server = try await NBDServerProcess.nbdServer(image: image.path)
        try await withCleanup {
            try await Self.killAndRestartMidStream(server, image: image, seed: 3)
        } cleanup: {
            await server.stop()
        }
    }

    /// A restarted memory server has an empty disk: this checks the reconnection and the
    /// re-sent requests (every write completes), not the data.
    @Test func nbdkitMemoryKilledAndRestartedReconnects() async throws {
        let server = try await NBDServerProcess.nbdkit(["memory", String(Self.blockCount * Self.blockSize)])
        try await withCleanup {
            try await Self.killAndRestartMidStream(server, image: nil, seed: 4)
        } cleanup: {
            await server.stop()
        }
    }

    /// Requests submitted while the server is down wait (or are re-sent, if they went out
    /// before the engine saw the connection end) and complete once it is back.
    @Test func requestsSubmittedWhileTheServerIsDownCompleteWhenItIsBack() async throws {
        let server = try await NBDServerProcess.nbdkit(["memory", "1M"])
        try await withCleanup {
            let uri = server.uri
            let s = try await onThread { try NBDStorage(uri: uri, queueDepth: 8, reconnectWindow: .seconds(120)) }
            defer { s.close() }
            let b = Buffers(byteCount: 4 * 4096, iovecCount: 4)
            for i in 0..<(2 * 4096) { b.bytes[i] = UInt8(truncatingIfNeeded: i &* 31) }
            let box = UncheckedBox((s, b))
            await server.kill()
            try? await Task.sleep(for: .milliseconds(300))
            let accepted = try await onThread {
                let (s, b) = box.value
                let ops: [StorageOperation] = [.write(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096])),
                                               .write(tag: 2, offset: 4096, buffers: b.vector(first: 1, at: 4096, pieces: [4096])),
                                               .flush(tag: 3)]
                return try ops.withUnsafeBufferPointer { try s.submit($0) }
            }
            #expect(accepted == 3)
            try? await Task.sleep(for: .milliseconds(300))
            try await onThread { try server.restartBlocking() }
            let (completions, reconnections) = try await onThread { () -> ([StorageCompletion], Int) in
                let (s, b) = box.value
                var d = Driver(s)
                var seen: [StorageCompletion] = []
                let end = ContinuousClock.now + .seconds(minimumDeadline)
                while seen.count < 3 && ContinuousClock.now < end {
                    let n = try d.completions.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .milliseconds(200)) }
                    seen += d.completions.prefix(n)
                }
                // What the restarted server holds now is what was written after it came back.
                let r = try d.run([.read(tag: 4, offset: 0, buffers: b.vector(first: 2, at: 2 * 4096, pieces: [8192]))])
                if r[4]?.succeeded != true { seen.append(r[4] ?? .empty) }
                return (seen, s.reconnections)
            }
            #expect(completions.count == 3 && completions.allSatisfy(\.succeeded), "\(completions)")
            #expect(reconnections == 1)
            #expect(memcmp(b.bytes.baseAddress!, b.bytes.baseAddress! + 2 * 4096, 8192) == 0)
        } cleanup: {
            await server.stop()
        }
    }

    /// A server stopped with SIGSTOP: the requests sent to it fail alone once past the
    /// (short) request timeout, the connection stays, and after SIGCONT new requests work.
    @Test func aStoppedServerFailsOnlyTheRequestsPastTheTimeout() async throws {
        let server = try await NBDServerProcess.nbdkit(["memory", "1M"])
        try await withCleanup {
            let uri = server.uri
            let s = try await onThread { try NBDStorage(uri: uri, queueDepth: 8, requestTimeout: .seconds(2)) }
            let b = Buffers(byteCount: 4 * 4096, iovecCount: 4)
            let box = UncheckedBox((s, b))
            defer { s.close() }
            try await onThread { try server.stopBlocking() }
            let stalled = try await onThread {
                let (s, b) = box.value
                var d = Driver(s)
                return try d.run((0..<3).map { .read(tag: UInt64($0), offset: 0, buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) })
            }
            server.send(SIGCONT)
            #expect(stalled.count == 3)
            #expect(stalled.values.allSatisfy { $0.error?.code == .io(.timedOut) }, "\(stalled)")
            let later = try await onThread {
                let (s, b) = box.value
                var d = Driver(s)
                return try d.run([.write(tag: 7, offset: 8192, buffers: b.vector(first: 3, at: 3 * 4096, pieces: [4096])),
                                  .read(tag: 8, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096]))])
            }
            #expect(later[7]?.succeeded == true && later[8]?.succeeded == true)
            #expect(s.reconnections == 0)
        } cleanup: {
            await server.stop()
        }
    }

    /// Writes every block once, in a shuffled order, at queue depth 16, with a flush after
    /// every 64 writes. A quarter of the way in, right after a reap made room, the server
    /// is stopped (SIGSTOP), one more batch is submitted (so at least one request was sent
    /// that it never answered), and it is killed and started again. Then every block is
    /// read back through the engine and, for a file, from the file.
    static func killAndRestartMidStream(_ server: NBDServerProcess, image: TemporaryImage?, seed: UInt64) async throws {
        let uri = server.uri
        let result = try await onThread { () -> (failures: [String], resent: Int, reconnections: Int, mismatches: Int, written: [UInt8]) in
            let s = try NBDStorage(uri: uri, queueDepth: 16, requestTimeout: .seconds(120), reconnectWindow: .seconds(120))
            defer { s.close() }
            let data = Buffers(byteCount: blockCount * blockSize, iovecCount: blockCount)
            var random = SplitMix(seed: seed)
            let words = data.bytes.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = random.next() }
            var ops: [StorageOperation] = []
            for (n, block) in (0..<blockCount).shuffled(using: &random).enumerated() {
                ops.append(.write(tag: UInt64(block), offset: UInt64(block * blockSize),
                                  buffers: data.vector(first: block, at: block * blockSize, pieces: [blockSize])))
                if n % 64 == 63 { ops.append(.flush(tag: UInt64(100_000 + n))) }
            }
            var failures: [String] = []
            var completions = [StorageCompletion](repeating: .empty, count: 64)
            var next = 0
            var done = 0
            var phase = 0  // 0: before the kill, 1: server stopped, 2: restarted
            let end = ContinuousClock.now + .seconds(minimumDeadline)
            while done < ops.count && ContinuousClock.now < end {
                if next < ops.count {
                    let n = try ops[next...].withUnsafeBufferPointer { try s.submit($0) }
                    next += n
                    if phase == 1 && n > 0 {
                        try server.restartBlocking()
                        phase = 2
                    }
                }
                let n = try completions.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .milliseconds(200)) }
                for c in completions.prefix(n) where !c.succeeded { failures.append("\(c.tag): \(String(describing: c.error))") }
                done += n
                if phase == 0 && n > 0 && done >= ops.count / 4 && next < ops.count {
                    try server.stopBlocking()
                    phase = 1
                }
            }
            if done < ops.count { failures.append("only \(done) of \(ops.count) operations completed") }
            // Read everything back, 64 KiB at a time.
            let back = Buffers(byteCount: blockCount * blockSize, iovecCount: blockCount)
            var d = Driver(s)
            let reads = (0..<blockCount / 16).map {
                StorageOperation.read(tag: UInt64($0), offset: UInt64($0 * 16 * blockSize),
                                      buffers: back.vector(first: $0, at: $0 * 16 * blockSize, pieces: [16 * blockSize]))
            }
            let r = try d.run(reads)
            if r.count != reads.count || !r.values.allSatisfy(\.succeeded) { failures.append("read-back failed: \(r.values.filter { !$0.succeeded })") }
            var mismatches = 0
            for i in 0..<blockCount where memcmp(data.bytes.baseAddress! + i * blockSize, back.bytes.baseAddress! + i * blockSize, blockSize) != 0 {
                mismatches += 1
            }
            return (failures, s.resentRequests, s.reconnections, mismatches, Array(data.bytes))
        }
        #expect(result.failures.isEmpty, "\(result.failures.prefix(5))")
        #expect(result.reconnections >= 1)
        #expect(result.resent >= 1)
        if let image {
            #expect(result.mismatches == 0, "\(result.mismatches) blocks read back differ from what was written")
            let file = try image.contents()
            #expect(file == result.written, "the image does not hold what was written and acknowledged")
        }
    }
}
