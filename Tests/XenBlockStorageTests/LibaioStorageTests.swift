import Foundation
import CAIO
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// Real libaio on a real file in a temporary directory (ext4 here, so O_DIRECT is
/// accepted; the buffered path is tested by asking for it and by a refused O_DIRECT).
@Suite(.timeLimit(.minutes(2)))
struct LibaioStorageTests {
    @Test func directIOOnAnImageFile() throws {
        let image = try TemporaryImage(bytes: 8 << 20)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 32)
        defer { s.close() }
        #expect(s.byteCount == 8 << 20)
        #expect(s.ioMode == .direct, "O_DIRECT refused on \(image.path)")
        #expect(s.alignment >= 512 && s.alignment <= 4096)
        #expect(s.prefersContiguousBuffers, "buffers go to the device as scatter-gather lists")
        try Conformance.randomIO(s, seed: 11)
    }

    @Test func bufferedIOOnAnImageFile() throws {
        let image = try TemporaryImage(bytes: 4 << 20)
        let s = try LibaioStorage(path: image.filePath, directIO: .never, queueDepth: 16)
        defer { s.close() }
        #expect(s.ioMode == .buffered && s.alignment == 1)
        #expect(!s.prefersContiguousBuffers, "the page cache copies anyway")
        try Conformance.randomIO(s, seed: 12, rounds: 4)
    }

    @Test func fallsBackWhenODirectIsRefused() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        // tmpfs before Linux 6.6 answered O_DIRECT with EINVAL; play that file system.
        let refuseDirect = { (p: FilePath, r: LibaioStorage.OpenRequest) throws(Errno) -> FileDescriptor in
            if r.direct { throw Errno.invalidArgument }
            do { return try FileDescriptor.open(p, r.mode, options: r.options) } catch { throw error as! Errno }
        }
        let s = try LibaioStorage(path: image.filePath, readOnly: false, directIO: .preferred, queueDepth: 8, open: refuseDirect)
        defer { s.close() }
        #expect(s.ioMode == .buffered && s.alignment == 1)
        try Conformance.randomIO(s, seed: 13, rounds: 2, batch: 8)
        #expect(throws: StorageError.self) {
            _ = try LibaioStorage(path: image.filePath, readOnly: false, directIO: .required, queueDepth: 8, open: refuseDirect)
        }
    }

    @Test func misalignedAndOutOfRangeAreRefusedClearly() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 16)
        defer { s.close() }
        try #require(s.ioMode == .direct)
        try Conformance.refusals(s)
    }

    @Test func backPressureAndBoundedWaits() throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
        defer { s.close() }
        try Conformance.backPressure(s)
        try Conformance.boundedIdleReap(s)
    }

    @Test func readOnlyRefusesWrites() throws {
        let image = try TemporaryImage(bytes: 64 * 1024, fill: 0x77)
        let s = try LibaioStorage(path: image.filePath, readOnly: true, queueDepth: 8)
        defer { s.close() }
        #expect(s.isReadOnly)
        let b = Buffers(byteCount: 8192)
        var d = Driver(s)
        let r = try d.run([
            .write(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096])),
            .discard(tag: 2, offset: 0, length: 4096),
            .read(tag: 3, offset: 4096, buffers: b.vector(first: 1, at: 4096, pieces: [4096])),
        ])
        #expect(r[1]?.error?.code == .readOnly && r[2]?.error?.code == .readOnly)
        #expect(r[3]?.succeeded == true)
        #expect(b.bytes[4096..<8192].allSatisfy { $0 == 0x77 })
        #expect(try image.contents().allSatisfy { $0 == 0x77 })
    }

    @Test func flushAndDiscardGoThroughTheReapPath() throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0xC3)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
        defer { s.close() }
        let blocksBefore = image.allocatedBlocks()
        let ops: [StorageOperation] = [.flush(tag: 1), .discard(tag: 2, offset: 256 * 1024, length: 512 * 1024)]
        _ = try ops.withUnsafeBufferPointer { try s.submit($0) }
        // Done synchronously, but reported only through the descriptor and reap.
        #expect(Driver.waitReadable(s.completionDescriptor, milliseconds: 5000))
        var out = [StorageCompletion](repeating: .empty, count: 1)
        var tags: [UInt64] = []
        for _ in 0..<2 {
            // A one-slot array: the left-over must keep the descriptor readable.
            #expect(Driver.waitReadable(s.completionDescriptor, milliseconds: 5000))
            let n = try out.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .zero) }
            #expect(n == 1 && out[0].succeeded)
            tags.append(out[0].tag)
        }
        #expect(tags == [1, 2])
        let bytes = try image.contents()
        #expect(bytes[0..<256 * 1024].allSatisfy { $0 == 0xC3 })
        #expect(bytes[256 * 1024..<768 * 1024].allSatisfy { $0 == 0 })
        #expect(bytes[(768 * 1024)...].allSatisfy { $0 == 0xC3 })
        #expect(image.allocatedBlocks() < blocksBefore, "punch-hole freed no blocks")
    }

    @Test func aShortReadIsContinuedAndAnEndOfFileFails() throws {
        // The file shrinks under the engine (the size was read at open): the kernel returns
        // a short read; the engine resubmits the remainder, gets 0, and fails that read alone.
        let image = try TemporaryImage(bytes: 64 * 1024, fill: 0x11)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
        defer { s.close() }
        #expect(truncate(image.path, 16 * 1024) == 0)
        let b = Buffers(byteCount: 64 * 1024)
        var d = Driver(s)
        let r = try d.run([
            .read(tag: 1, offset: 8 * 1024, buffers: b.vector(first: 0, at: 0, pieces: [4096, 12 * 1024])),
            .read(tag: 2, offset: 0, buffers: b.vector(first: 2, at: 32 * 1024, pieces: [8192])),
        ])
        let e = try #require(r[1]?.error)
        #expect(e.code == .io(.ioError) && e.message.contains("stopped at 8192 of 16384"))
        #expect(b.bytes[0..<8192].allSatisfy { $0 == 0x11 })  // the part that existed was read
        #expect(r[2]?.succeeded == true)
    }

    @Test func missingFileIsATypedError() {
        #expect(throws: StorageError.self) { _ = try LibaioStorage(path: "/nonexistent/xenpv.img") }
    }
}

/// The block-device path (BLKGETSIZE64, BLKSSZGET, discard on a device), on a loop
/// device over a temporary file. Skipped where loop devices cannot be attached.
@Suite(.timeLimit(.minutes(2)))
struct LibaioBlockDeviceTests {
    static func losetup(_ arguments: [String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/losetup")
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        guard (try? p.run()) != nil else { return nil }
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { return nil }
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func randomIOOnALoopDevice() throws {
        let image = try TemporaryImage(bytes: 4 << 20)
        guard let device = Self.losetup(["--find", "--show", "--sector-size", "4096", image.path]), !device.isEmpty else {
            print("loop devices unavailable; block-device path not exercised")
            return
        }
        defer { _ = Self.losetup(["--detach", device]) }
        let s = try LibaioStorage(path: FilePath(device), queueDepth: 32)
        defer { s.close() }
        #expect(s.byteCount == 4 << 20)
        #expect(s.ioMode == .direct)
        #expect(s.alignment == 4096)  // BLKSSZGET of a 4 KiB-sector loop device
        try Conformance.randomIO(s, seed: 21, rounds: 3)
        try Conformance.refusals(s)
    }
}

/// What io_submit rarely does on a healthy kernel, played through the engine's funnel.
@Suite(.timeLimit(.minutes(2)))
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

    @Test func eagainAndPartialAcceptanceAreRetried() throws {
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

    /// More than two in one call and Linux holds them back until the call returns (a plug).
    @Test func noCallHandsTheKernelMoreThanTwoIocbs() throws {
        var largest = 0
        let (r, _) = try runBatch { ctx, n, cbs in
            largest = max(largest, n)
            return io_submit(ctx, n, cbs)
        }
        #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
        #expect(largest == 2)
    }

    /// Polling looks at the kernel's completion ring without a system call; it must see
    /// every completion, and nothing once all are reaped.
    @Test func mayHaveCompletionsSeesTheKernelsRing() async throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
        let s = try LibaioStorage(path: image.filePath, queueDepth: 8)
        defer { s.close() }
        #expect(!s.mayHaveCompletions)
        let b = Buffers(byteCount: 4096)
        var op = StorageOperation.read(tag: 7, offset: 4096, buffers: b.vector(first: 0, at: 0, pieces: [4096]))
        #expect(try withUnsafePointer(to: &op) { try s.submit(UnsafeBufferPointer(start: $0, count: 1)) } == 1)
        #expect(await eventually(10, every: .microseconds(100)) { s.mayHaveCompletions })
        var out = [StorageCompletion](repeating: .empty, count: 4)
        #expect(try out.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .zero) } == 1)
        #expect(out[0].tag == 7 && out[0].succeeded)
        #expect(!s.mayHaveCompletions)
    }

    @Test func anIocbTheKernelRefusesFailsAlone() throws {
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
