import Foundation
import Glibc
import NBDProtocol
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// The NBD engine against real servers started by the test (nbdkit's memory and file
/// plugins, qemu-nbd), and against a hostile server in the test.
@Suite(.enabled(if: nbdServersInstalled), .timeLimit(.minutes(5)))
struct NBDStorageTests {
    @Test func nbdkitMemoryConformsToTheEngineContract() async throws {
        let server = try await NBDServerProcess.nbdkit(["memory", "8M"])
        try await withCleanup {
            let uri = server.uri
            try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 32)
                defer { s.close() }
                #expect(s.byteCount == 8 << 20)
                #expect(!s.isReadOnly && s.supportsFlush && s.supportsDiscard)
                try Conformance.randomIO(s, seed: 17, rounds: 4)
                try Conformance.refusals(s)
                try Conformance.backPressure(s)
                try Conformance.boundedIdleReap(s)
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// The engine's reader thread carries its name where the kernel shows it (`top -H`,
    /// `ps -L`, `perf`), not the name of the thread that opened the engine: Foundation's
    /// `Thread.name` does not reach the kernel on Linux.
    @Test func theReaderThreadHasItsNameInTheKernel() async throws {
        let server = try await NBDServerProcess.nbdkit(["memory", "1M"])
        try await withCleanup {
            let uri = server.uri
            let named = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 1)
                defer { s.close() }
                // The reader names itself once it runs.
                return eventuallyBlocking(every: .milliseconds(10)) { threadNames().contains("nbd-client") }
            }
            #expect(named, "no thread of this process has the kernel name nbd-client")
        } cleanup: {
            await server.stop()
        }
    }

    /// Writes from the engine land in the file nbdkit serves; what the file holds comes back.
    @Test func nbdkitFileServesTheImage() async throws {
        let image = try TemporaryImage(bytes: 4 << 20, fill: 0x5A)
        let server = try await NBDServerProcess.nbdkit(["file", image.path])
        try await withCleanup {
            try await writeReadFlush(server.uri, image: image)
        } cleanup: {
            await server.stop()
        }
    }

    @Test func qemuNBDServesTheImage() async throws {
        let image = try TemporaryImage(bytes: 4 << 20, fill: 0x5A)
        let server = try await NBDServerProcess.qemuNBD(image: image.path)
        try await withCleanup {
            try await writeReadFlush(server.uri, image: image)
            let uri = server.uri
            try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 16)
                defer { s.close() }
                try Conformance.refusals(s)
                try Conformance.backPressure(s)
            }
        } cleanup: {
            await server.stop()
        }
    }

    private func writeReadFlush(_ uri: NBDURI, image: TemporaryImage) async throws {
        try await onThread {
            let s = try NBDStorage(uri: uri, queueDepth: 16)
            defer { s.close() }
            #expect(s.byteCount == 4 << 20)
            let b = Buffers(byteCount: 3 * 65536, iovecCount: 16)
            for i in 0..<65536 { b.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
            var d = Driver(s)
            // One write over three scattered buffers, a flush, a read over two.
            let w = try d.run([.write(tag: 1, offset: 8192, buffers: b.vector(first: 0, at: 0, pieces: [4096, 28672, 32768]))])
            #expect(w[1]?.succeeded == true)
            let f = try d.run([.flush(tag: 2)])
            #expect(f[2]?.succeeded == true)
            let r = try d.run([.read(tag: 3, offset: 8192, buffers: b.vector(first: 3, at: 65536, pieces: [61440, 4096])),
                               .read(tag: 4, offset: 0, buffers: b.vector(first: 5, at: 131072, pieces: [8192]))])
            #expect(r[3]?.succeeded == true && r[4]?.succeeded == true)
            #expect(Array(b.bytes[65536..<131072]) == Array(b.bytes[0..<65536]))
            #expect(b.bytes[131072..<139264].allSatisfy { $0 == 0x5A })
        }
        let file = try image.contents()
        var expected = [UInt8](repeating: 0, count: 65536)
        for i in 0..<65536 { expected[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
        #expect(Array(file[8192..<8192 + 65536]) == expected)
        #expect(file[0..<8192].allSatisfy { $0 == 0x5A })
    }

    /// A read-only export without trim (nbdkit's pattern plugin): writes and discards fail
    /// on the spot, flush and reads work, and the data is the server's.
    @Test func aReadOnlyExportWithoutTrimRefusesWritesAndDiscards() async throws {
        let server = try await NBDServerProcess.nbdkit(["pattern", "1M"])
        try await withCleanup {
            let uri = server.uri
            try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8)
                defer { s.close() }
                #expect(s.isReadOnly && !s.supportsDiscard)
                let b = try Conformance.readOnlyRefusals(s)
                // The pattern plugin: each 8-byte word is its own offset, big-endian.
                let word = b.bytes.load(fromByteOffset: 4096 + 8, as: UInt64.self)
                #expect(UInt64(bigEndian: word) == 4096 + 8)
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// nbdkit refusing requests above 64 KiB (blocksize-policy, error policy): a 1 MiB
    /// write and read go as 16 requests each, and the data comes back; a discard reads back as zeros.
    @Test func requestsAboveTheServersMaximumAreSplit() async throws {
        let server = try await NBDServerProcess.nbdkit(["--filter=blocksize-policy", "memory", "8M",
                                                        "blocksize-maximum=65536", "blocksize-error-policy=error"])
        try await withCleanup {
            let uri = server.uri
            try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 8)
                defer { s.close() }
                #expect(s.maximumPayload == 65536)
                let b = Buffers(byteCount: 2 << 20, iovecCount: 8)
                for i in 0..<(1 << 20) { b.bytes[i] = UInt8(truncatingIfNeeded: i &* 13 &+ i >> 12) }
                var d = Driver(s)
                let w = try d.run([.write(tag: 1, offset: 4096, buffers: b.vector(first: 0, at: 0, pieces: [1 << 19, 1 << 19]))])
                #expect(w[1]?.succeeded == true)
                let r = try d.run([.read(tag: 2, offset: 4096, buffers: b.vector(first: 2, at: 1 << 20, pieces: [1 << 20]))])
                #expect(r[2]?.succeeded == true)
                #expect(memcmp(b.bytes.baseAddress!, b.bytes.baseAddress! + (1 << 20), 1 << 20) == 0)
                let z = try d.run([.discard(tag: 3, offset: 4096, length: 1 << 20)])
                #expect(z[3]?.succeeded == true)
                let again = try d.run([.read(tag: 4, offset: 4096, buffers: b.vector(first: 3, at: 0, pieces: [1 << 20]))])
                #expect(again[4]?.succeeded == true)
                #expect(b.bytes[0..<(1 << 20)].allSatisfy { $0 == 0 })
            }
        } cleanup: {
            await server.stop()
        }
    }

    @Test func aMissingExportOrServerIsAClearError() async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let server = try await NBDServerProcess.qemuNBD(image: image.path)
        try await withCleanup {
            let named = NBDURI(endpoint: .unix(path: server.socket), exportName: "nope")
            await onThread {
                #expect { _ = try NBDStorage(uri: named) } throws: { e in
                    (e as? StorageError)?.message.contains("no export named") == true
                }
                let nowhere = NBDURI(endpoint: .unix(path: "/nonexistent/nbd.sock"), exportName: "")
                #expect(throws: StorageError.self) { _ = try NBDStorage(uri: nowhere) }
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// nbdkit killed while reads wait in its delay filter, and not started again: once
    /// the reconnect window has passed every one of them fails, and so does every later
    /// operation; nothing traps or hangs.
    @Test func aServerKilledMidStreamThatDoesNotComeBackFailsWhatIsOutstanding() async throws {
        let server = try await NBDServerProcess.nbdkit(["--filter=delay", "memory", "16M", "rdelay=5"])
        try await withCleanup {
            let uri = server.uri
            let s = try await onThread { try NBDStorage(uri: uri, queueDepth: 16, reconnectWindow: .seconds(2)) }
            let b = Buffers(byteCount: 8 * 4096, iovecCount: 8)
            let box = UncheckedBox((s, b))
            let accepted = try await onThread {
                let (s, b) = box.value
                let ops = (0..<8).map { StorageOperation.read(tag: UInt64($0), offset: UInt64($0) * 4096,
                                                              buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) }
                return try ops.withUnsafeBufferPointer { try s.submit($0) }
            }
            #expect(accepted == 8)
            await server.kill()
            try await onThread {
                let (s, b) = box.value
                defer { s.close() }
                var d = Driver(s)
                var seen: [StorageCompletion] = []
                let end = ContinuousClock.now + .seconds(minimumDeadline)
                while seen.count < 8 && ContinuousClock.now < end {
                    let n = try d.completions.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .milliseconds(200)) }
                    seen += d.completions.prefix(n)
                }
                #expect(seen.count == 8 && seen.allSatisfy { !$0.succeeded })
                #expect(seen.allSatisfy { $0.error?.message.contains("no connection within") == true })
                let later = try d.run([.read(tag: 99, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096]))])
                #expect(later[99]?.succeeded == false)
            }
        } cleanup: {
            await server.stop()
        }
    }
}

/// Hands a non-Sendable value to the engine's thread; the test uses it from one thread at a time.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
