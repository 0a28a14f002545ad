import Foundation
import CAIO
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// What io_submit rarely does on a healthy kernel, played through the engine's funnel.
@Suite(.timeLimit(.minutes(5)))
struct LibaioSubmitFaultTests {
    func batch(_ b: Buffers) -> [StorageOperation] {
        (0..<6).map { i in
            let iov = b.vector(first: i, at: i * 4096, pieces: [4096])
            return i % 3 == 1 ? .write(tag: UInt64(i), offset: UInt64(i * 4096), buffers: iov)
                              : .read(tag: UInt64(i), offset: UInt64(i * 4096), buffers: iov)
        }
    }

    /// The operations of ``batch(_:)`` on a 1 MiB image of 0x42 bytes, through an engine
    /// whose `io_submit` is `submit`: every completion by tag, and the buffers.
    func runBatch(submit: @escaping LibaioStorage.IOSubmit) throws -> (results: [UInt64: StorageCompletion], buffers: Buffers) {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
        defer { s.close() }
        s.ioSubmit = submit
        let b = Buffers(byteCount: 6 * 4096)
        var d = Driver(s)
        return (try d.run(batch(b)), b)
    }

    @Test func eagainAndPartialAcceptanceAreRetried() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            var calls = 0
            let (r, b) = try runBatch { ctx, n, cbs in
                calls += 1
                if calls <= 2 { return -EAGAIN }          // out of kernel resources, twice
                return io_submit(ctx, min(n, 1), cbs)       // then one iocb per call
            }
            #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
            #expect(calls >= 8)
            #expect(b.bytes[0..<4096].allSatisfy { $0 == 0x42 })
        }
    }

    /// Opened buffered, reads and writes are done in `submit` (native AIO would do them
    /// inside `io_submit` all the same): no iocb reaches the kernel, and every byte lands.
    @Test func bufferedReadsAndWritesMakeNoIoSubmit() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
            let s = try LibaioStorage(path: image.filePath, directIO: .never, queueDepth: 8)
            defer { s.close() }
            #expect(s.ioMode == .buffered)
            var calls = 0
            s.ioSubmit = { ctx, n, cbs in
                calls += 1
                return io_submit(ctx, n, cbs)
            }
            let b = Buffers(byteCount: 6 * 4096)
            for i in 0..<(6 * 4096) { b.bytes[i] = UInt8(truncatingIfNeeded: i % 249) }
            var d = Driver(s)
            let r = try d.run(batch(b))
            #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
            #expect(calls == 0, "\(calls) io_submit calls")
            // batch: reads at 0, 2, 3, 5 (the image's 0x42), writes of pieces 1 and 4.
            #expect(b.bytes[0..<4096].allSatisfy { $0 == 0x42 })
            let file = try image.contents()
            #expect((4096..<8192).allSatisfy { file[$0] == b.bytes[$0] } && file[8192] == 0x42)
        }
    }

    /// Completions are read from the kernel's ring in this process's memory: a reap that
    /// does not wait makes no `io_getevents`, and every operation still completes once,
    /// with its bytes.
    @Test func completionsAreReapedFromTheRingWithoutIoGetevents() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
            let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
            defer { s.close() }
            #expect(s.ioMode == .direct)
            var calls = 0
            s.ioGetEvents = { ctx, min, nr, events, ts in
                calls += 1
                return io_getevents(ctx, min, nr, events, ts)
            }
            let b = Buffers(byteCount: 6 * 4096)
            for i in 0..<(6 * 4096) { b.bytes[i] = UInt8(truncatingIfNeeded: i % 251) }
            var d = Driver(s)
            for _ in 0..<3 {
                let r = try d.run(batch(b))
                #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
            }
            #expect(calls == 0, "\(calls) io_getevents calls")
            #expect(b.bytes[0..<4096].allSatisfy { $0 == 0x42 })
            let file = try image.contents()
            #expect((4096..<8192).allSatisfy { file[$0] == b.bytes[$0] } && file[8192] == 0x42)
        }
    }

    /// More than two in one call and Linux holds them back until the call returns (a plug).
    @Test func noCallHandsTheKernelMoreThanTwoIocbs() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            var largest = 0
            let (r, _) = try runBatch { ctx, n, cbs in
                largest = max(largest, n)
                return io_submit(ctx, n, cbs)
            }
            #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
            #expect(largest == 2)
        }
    }

    @Test func anIocbTheKernelRefusesFailsAlone() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let (r, _) = try runBatch { ctx, n, cbs in
                // Refuse writes with EBADF; hand the kernel the run of reads before one.
                if cbs[0]!.pointee.aio_lio_opcode == Int16(IO_CMD_PWRITEV.rawValue) { return -EBADF }
                var reads = 0
                while reads < n && cbs[reads]!.pointee.aio_lio_opcode != Int16(IO_CMD_PWRITEV.rawValue) { reads += 1 }
                return io_submit(ctx, reads, cbs)
            }
            for t: UInt64 in 0..<6 {
                if t % 3 == 1 {
                    #expect(r[t]?.error?.code == .io(.badFileDescriptor), "tag \(t)")
                } else {
                    #expect(r[t]?.succeeded == true, "tag \(t)")
                }
            }
        }
    }
}
