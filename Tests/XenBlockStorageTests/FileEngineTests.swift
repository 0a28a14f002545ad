import Foundation
import CAIO
import CPageCacheProbe
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// The file engines, for tests that hold for both: each opens the same way and must
/// answer every operation the same way.
enum FileEngine: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case libaio
    case ioUring = "io_uring"

    var testDescription: String { rawValue }

    func open(_ path: FilePath, readOnly: Bool = false, directIO: StorageDirectIO = .preferred,
              queueDepth: Int = 32) throws(StorageError) -> any FileStorage {
        switch self {
        case .libaio: try LibaioStorage(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth)
        case .ioUring: try UringStorage(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth)
        }
    }

    func open(_ path: FilePath, directIO: StorageDirectIO, queueDepth: Int,
              funnel: @escaping StorageFile.Open) throws(StorageError) -> any FileStorage {
        switch self {
        case .libaio: try LibaioStorage(path: path, readOnly: false, directIO: directIO, queueDepth: queueDepth, open: funnel)
        case .ioUring: try UringStorage(path: path, readOnly: false, directIO: directIO, queueDepth: queueDepth,
                                        sqPollIdle: nil, open: funnel)
        }
    }
}

/// What the file engines share beyond ``StorageEngine``, for the tests.
protocol FileStorage: FileStorageEngine {
    var testDescriptor: FileDescriptor { get }
}

extension LibaioStorage: FileStorage {
    var testDescriptor: FileDescriptor { fd }
}

extension UringStorage: FileStorage {
    var testDescriptor: FileDescriptor { fd }
}

/// Real libaio and real io_uring on a real file in a temporary directory (ext4 here, so
/// O_DIRECT is accepted; the buffered path is tested by asking for it and by a refused
/// O_DIRECT).
@Suite(.timeLimit(.minutes(5)))
struct FileEngineTests {
    @Test(arguments: FileEngine.allCases) func directIOOnAnImageFile(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 8 << 20)
            let s = try engine.open(image.filePath, queueDepth: 32)
            defer { s.close() }
            #expect(s.byteCount == 8 << 20)
            #expect(s.ioMode == .direct, "O_DIRECT refused on \(image.path)")
            #expect(s.alignment >= 512 && s.alignment <= 4096)
            #expect(s.prefersContiguousBuffers, "buffers go to the device as scatter-gather lists")
            try Conformance.randomIO(s, seed: 11)
        }
    }

    @Test(arguments: FileEngine.allCases) func bufferedIOOnAnImageFile(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 4 << 20)
            let s = try engine.open(image.filePath, directIO: .never, queueDepth: 16)
            defer { s.close() }
            #expect(s.ioMode == .buffered && s.alignment == 1)
            #expect(!s.prefersContiguousBuffers, "the page cache copies anyway")
            try Conformance.randomIO(s, seed: 12, rounds: 4)
        }
    }

    /// An image written through the page cache is flushed when the engine closes: no page of
    /// it is left dirty (cachestat), so a backend elsewhere that opens it next sees every write.
    @Test(arguments: FileEngine.allCases) func closingABufferedImageFlushesIt(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20)
            // tmpfs pages stay dirty whatever is flushed: the check needs a file system that writes back.
            try #require(!FileEngineKind.isOnTmpfs(image.filePath), "TMPDIR is on tmpfs here")
            let s = try engine.open(image.filePath, directIO: .never, queueDepth: 8)
            let b = Buffers(byteCount: 16 * 4096)
            for i in 0..<(16 * 4096) { b.bytes[i] = UInt8(truncatingIfNeeded: i % 253) }
            var d = Driver(s)
            let r = try d.run((0..<16).map { .write(tag: UInt64($0), offset: UInt64($0 * 8192), buffers: b.vector(first: $0, at: $0 * 4096, pieces: [4096])) })
            #expect(r.count == 16 && r.values.allSatisfy(\.succeeded))
            s.close()
            var dirty: UInt64 = .max
            let e = image.path.withCString { cpc_dirty_pages($0, &dirty) }
            try #require(e == 0, "cachestat: \(String(cString: strerror(e)))")
            #expect(dirty == 0, "\(dirty) dirty pages after close")
            let file = try image.contents()
            #expect((0..<16).allSatisfy { i in (0..<4096).allSatisfy { file[i * 8192 + $0] == b.bytes[i * 4096 + $0] } })
        }
    }

    @Test(arguments: FileEngine.allCases) func fallsBackWhenODirectIsRefused(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20)
            // tmpfs before Linux 6.6 answered O_DIRECT with EINVAL; play that file system.
            let refuseDirect = { (p: FilePath, r: StorageOpenRequest) throws(Errno) -> FileDescriptor in
                if r.direct { throw Errno.invalidArgument }
                do { return try FileDescriptor.open(p, r.mode, options: r.options) } catch { throw error as! Errno }
            }
            let s = try engine.open(image.filePath, directIO: .preferred, queueDepth: 8, funnel: refuseDirect)
            defer { s.close() }
            #expect(s.ioMode == .buffered && s.alignment == 1)
            try Conformance.randomIO(s, seed: 13, rounds: 2, batch: 8)
            #expect(throws: StorageError.self) {
                _ = try engine.open(image.filePath, directIO: .required, queueDepth: 8, funnel: refuseDirect)
            }
        }
    }

    @Test(arguments: FileEngine.allCases) func misalignedAndOutOfRangeAreRefusedClearly(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20)
            let s = try engine.open(image.filePath, queueDepth: 16)
            defer { s.close() }
            try #require(s.ioMode == .direct)
            try Conformance.refusals(s)
        }
    }

    @Test(arguments: FileEngine.allCases) func backPressureAndBoundedWaits(_ engine: FileEngine) async throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        // Its reaps wait (an idle one for all its timeout): on a thread of their own.
        try await onThread {
            let s = try engine.open(image.filePath, queueDepth: 8)
            defer { s.close() }
            try Conformance.backPressure(s)
            try Conformance.boundedIdleReap(s)
        }
    }

    @Test(arguments: FileEngine.allCases) func readOnlyRefusesWrites(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 64 * 1024, fill: 0x77)
            let s = try engine.open(image.filePath, readOnly: true, queueDepth: 8)
            defer { s.close() }
            #expect(s.isReadOnly)
            let b = try Conformance.readOnlyRefusals(s)
            #expect(b.bytes[4096..<8192].allSatisfy { $0 == 0x77 })
            #expect(try image.contents().allSatisfy { $0 == 0x77 })
        }
    }

    @Test(arguments: FileEngine.allCases) func flushAndDiscardGoThroughTheReapPath(_ engine: FileEngine) async throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0xC3)
        // It waits for the descriptor and reaps: on a thread of its own.
        try await onThread {
            let s = try engine.open(image.filePath, queueDepth: 8)
            defer { s.close() }
            let blocksBefore = image.allocatedBlocks()
            let ops: [StorageOperation] = [.flush(tag: 1), .discard(tag: 2, offset: 256 * 1024, length: 512 * 1024)]
            _ = try ops.withUnsafeBufferPointer { try s.submit($0) }
            // Reported only through the descriptor and reap.
            #expect(Driver.waitReadable(s.completionDescriptor, milliseconds: Int32(minimumDeadline * 1000)))
            var out = [StorageCompletion](repeating: .empty, count: 1)
            var tags: [UInt64] = []
            var wakes = 0
            while tags.count < 2 && wakes < 100 {
                // A one-slot array: a left-over must keep the descriptor readable (a wake may
                // also be spurious: io_uring does the two concurrently and signals per completion).
                #expect(Driver.waitReadable(s.completionDescriptor, milliseconds: Int32(minimumDeadline * 1000)))
                wakes += 1
                let n = try out.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .zero) }
                if n == 1 {
                    #expect(out[0].succeeded)
                    tags.append(out[0].tag)
                }
            }
            #expect(Set(tags) == [1, 2])
            let bytes = try image.contents()
            #expect(bytes[0..<256 * 1024].allSatisfy { $0 == 0xC3 })
            #expect(bytes[256 * 1024..<768 * 1024].allSatisfy { $0 == 0 })
            #expect(bytes[(768 * 1024)...].allSatisfy { $0 == 0xC3 })
            #expect(image.allocatedBlocks() < blocksBefore, "punch-hole freed no blocks")
        }
    }

    @Test(arguments: FileEngine.allCases) func aShortReadIsContinuedAndAnEndOfFileFails(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            // The file shrinks under the engine (the size was read at open): the kernel returns
            // a short read; the engine resubmits the remainder, gets 0, and fails that read alone.
            let image = try TemporaryImage(bytes: 64 * 1024, fill: 0x11)
            let s = try engine.open(image.filePath, queueDepth: 8)
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
    }

    /// Many operations in flight at once, over scattered offsets: every one completes once
    /// with its own data (each 4 KiB block holds its own index).
    @Test(arguments: FileEngine.allCases) func manyInFlight(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let blocks = 512
            let image = try TemporaryImage(bytes: blocks * 4096)
            do {
                let fd = open(image.path, O_WRONLY)
                defer { Glibc.close(fd) }
                var block = [UInt8](repeating: 0, count: 4096)
                for i in 0..<blocks {
                    block.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(i), as: UInt32.self) }
                    #expect(block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(i * 4096)) } == 4096)
                }
            }
            let s = try engine.open(image.filePath, queueDepth: 128)
            defer { s.close() }
            let b = Buffers(byteCount: blocks * 4096, iovecCount: blocks)
            var rng = SplitMix(seed: 5)
            let order = (0..<blocks).shuffled(using: &rng)
            let ops = order.enumerated().map { (slot, block) in
                StorageOperation.read(tag: UInt64(block), offset: UInt64(block * 4096),
                                      buffers: b.vector(first: slot, at: slot * 4096, pieces: [4096]))
            }
            var d = Driver(s)
            let r = try d.run(ops)
            #expect(r.count == blocks && r.values.allSatisfy(\.succeeded))
            for (slot, block) in order.enumerated() {
                #expect(b.bytes.load(fromByteOffset: slot * 4096, as: UInt32.self) == UInt32(block))
            }
        }
    }

    /// The file under the engine stops being one it can use (its descriptor now names a
    /// directory): every operation fails through its own completion, nothing traps, and
    /// the engine still closes.
    @Test(arguments: FileEngine.allCases) func aFailedFileFailsEachOperation(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20)
            let s = try engine.open(image.filePath, queueDepth: 16)
            defer { s.close() }
            let dir = open(image.directory.path, O_RDONLY | O_DIRECTORY)
            try #require(dir >= 0)
            #expect(dup2(dir, s.testDescriptor.rawValue) == s.testDescriptor.rawValue)
            Glibc.close(dir)
            let b = Buffers(byteCount: 16 * 1024)
            var d = Driver(s)
            let r = try d.run([
                .read(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096])),
                .write(tag: 2, offset: 4096, buffers: b.vector(first: 1, at: 4096, pieces: [4096, 4096])),
                .discard(tag: 3, offset: 0, length: 4096),
                .read(tag: 4, offset: 8192, buffers: b.vector(first: 3, at: 0, pieces: [4096])),
            ])
            for t: UInt64 in [1, 2, 3, 4] {
                #expect(r[t]?.succeeded == false, "tag \(t)")
            }
            #expect(s.outstanding == 0)
        }
    }

    /// Operations as a hostile guest could make blkback build them (offsets at and past the
    /// end, wrapping ranges, empty and huge buffers, misaligned addresses, too many buffers):
    /// each completes exactly once, nothing traps, nothing goes out of its buffer, and the
    /// engine serves a good read afterwards.
    @Test(arguments: FileEngine.allCases) func hostileOperationsFailAloneAndNeverTrap(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20, fill: 0x5C)
            let s = try engine.open(image.filePath, queueDepth: 16)
            defer { s.close() }
            let size = s.byteCount
            let region = 64 * 1024
            let buffers = Buffers(byteCount: region + 4096, iovecCount: 200 * 8)
            var rng = SplitMix(seed: 99)
            let offsets: [UInt64] = [0, 512, 4096, size - 4096, size - 512, size, size + 4096, .max, .max - 511, 1, 4095]
            let lengths: [Int] = [0, 1, 511, 512, 4096, region, Int.max / 2, Int.max]
            var ops: [StorageOperation] = []
            for i in 0..<200 {
                let tag = UInt64(i)
                let offset = offsets.randomElement(using: &rng)!
                switch Int.random(in: 0..<10, using: &rng) {
                case 0: ops.append(.flush(tag: tag))
                case 1: ops.append(.discard(tag: tag, offset: offset, length: [0, 512, 4096, size, .max].randomElement(using: &rng)!))
                case 2: ops.append(StorageOperation(kind: .read, tag: tag, offset: offset, buffers: nil, bufferCount: 3))
                default:
                    // Up to 8 buffers, each within the region (or so long that the range check refuses it).
                    let count = Int.random(in: 0...8, using: &rng)
                    for k in 0..<count {
                        let skew = Bool.random(using: &rng) ? 0 : Int.random(in: 1...511, using: &rng)
                        var length = lengths.randomElement(using: &rng)!
                        if length <= region { length = min(length, region - skew) }
                        buffers.iovecs[i * 8 + k] = iovec(iov_base: buffers.bytes.baseAddress! + skew, iov_len: length)
                    }
                    // Reads and writes; the guard bytes after the region show no read went past it.
                    ops.append(StorageOperation(kind: Bool.random(using: &rng) ? .read : .write, tag: tag, offset: offset,
                                                buffers: buffers.iovecs.baseAddress! + i * 8, bufferCount: count))
                }
            }
            buffers.bytes[region..<region + 4096].initializeMemory(as: UInt8.self, repeating: 0xEE)
            var d = Driver(s)
            let r = try d.run(ops)
            #expect(r.count == ops.count)
            #expect(buffers.bytes[region..<region + 4096].allSatisfy { $0 == 0xEE }, "an operation went past its buffers")
            let good = Buffers(byteCount: 4096)
            let after = try d.run([.read(tag: 1000, offset: 8192, buffers: good.vector(first: 0, at: 0, pieces: [4096]))])
            #expect(after[1000]?.succeeded == true)
        }
    }

    /// After ``StorageEngine/close()`` the engine refuses with `.closed` (a thrown error, not a trap).
    @Test(arguments: FileEngine.allCases) func aClosedEngineThrows(_ engine: FileEngine) throws {
        let image = try TemporaryImage(bytes: 1 << 20)
        let s = try engine.open(image.filePath, queueDepth: 8)
        s.close()
        s.close()
        let ops: [StorageOperation] = [.flush(tag: 1)]
        do {
            _ = try ops.withUnsafeBufferPointer { try s.submit($0) }
            Issue.record("submit after close did not throw")
        } catch {
            #expect((error as? StorageError)?.code == .closed)
        }
        var out = [StorageCompletion](repeating: .empty, count: 1)
        do {
            _ = try out.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .zero) }
            Issue.record("reap after close did not throw")
        } catch {
            #expect((error as? StorageError)?.code == .closed)
        }
    }

    /// Polling looks at the kernel's completion ring without a system call; it must see
    /// every completion, and nothing once all are reaped.
    @Test(arguments: FileEngine.allCases) func mayHaveCompletionsSeesTheKernelsRing(_ engine: FileEngine) async throws {
        let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
        // The engine's calls (a reap that may wait) on a thread of their own, which looks
        // at the ring between sleeps of its own.
        try await onThread {
            let s = try engine.open(image.filePath, queueDepth: 8)
            defer { s.close() }
            #expect(!s.mayHaveCompletions)
            let b = Buffers(byteCount: 4096)
            var op = StorageOperation.read(tag: 7, offset: 4096, buffers: b.vector(first: 0, at: 0, pieces: [4096]))
            #expect(try withUnsafePointer(to: &op) { try s.submit(UnsafeBufferPointer(start: $0, count: 1)) } == 1)
            #expect(eventuallyBlocking(every: .microseconds(100)) { s.mayHaveCompletions })
            var out = [StorageCompletion](repeating: .empty, count: 4)
            #expect(try out.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .seconds(minimumDeadline)) } == 1)
            #expect(out[0].tag == 7 && out[0].succeeded)
            #expect(!s.mayHaveCompletions)
        }
    }

    @Test(arguments: FileEngine.allCases) func missingFileIsATypedError(_ engine: FileEngine) {
        #expect(throws: StorageError.self) { _ = try engine.open("/nonexistent/xenpv.img") }
    }
}

/// The block-device path (BLKGETSIZE64, BLKSSZGET, discard on a device), on a loop
/// device over a temporary file. Skipped where loop devices cannot be attached.
@Suite(.timeLimit(.minutes(5)))
struct FileEngineBlockDeviceTests {
    /// Runs losetup and awaits it (`exitStatus(of:within:)`, never blocking a pool
    /// thread); its output, or nil if it failed.
    static func losetup(_ arguments: [String]) async -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/losetup")
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil, await exitStatus(of: p) == 0 else { return nil }
        let output = await onThread { out.fileHandleForReading.readDataToEndOfFile() }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(arguments: FileEngine.allCases) func randomIOOnALoopDevice(_ engine: FileEngine) async throws {
        let image = try TemporaryImage(bytes: 4 << 20)
        guard let device = await Self.losetup(["--find", "--show", "--sector-size", "4096", image.path]), !device.isEmpty else {
            print("loop devices unavailable; block-device path not exercised")
            return
        }
        try await withCleanup {
            // The engine's calls block: on a thread of their own.
            try await onThread {
                let s = try engine.open(FilePath(device), queueDepth: 32)
                defer { s.close() }
                #expect(s.byteCount == 4 << 20)
                #expect(s.ioMode == .direct)
                #expect(s.alignment == 4096)  // BLKSSZGET of a 4 KiB-sector loop device
                try Conformance.randomIO(s, seed: 21, rounds: 3)
                try Conformance.refusals(s)
            }
        } cleanup: {
            _ = await Self.losetup(["--detach", device])
        }
    }
}

