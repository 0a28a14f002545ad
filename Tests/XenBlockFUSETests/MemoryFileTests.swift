import BlockViewTestSupport
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
import XenBlockExport
import XenBlockFUSE

/// A ``MemoryBlockDevice`` as a FUSE file, used with plain system calls (from a thread of
/// their own: the device's tasks run on the cooperative pool).
@Suite(.timeLimit(.minutes(10)), .enabled(if: fuseAvailable, "needs /dev/fuse and root"))
struct MemoryFileTests {
    @Test func theFileHasTheDiskSizeAndMode() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 4 << 20))
        try await withMountedFile(device, name: "disk0") { file, _ in
            #expect(file.path.hasSuffix("/mnt/disk0"))
            let status = try await onThread { try fileStatus(file.path) }
            #expect(status.size == 4 << 20)
            #expect(status.mode == S_IFREG | 0o600)
            let names = try await onThread { try FileManager.default.contentsOfDirectory(atPath: file.directory) }
            #expect(names == ["disk0"])
            let missing = await onThread { FileManager.default.fileExists(atPath: file.directory + "/xvdb") }
            #expect(!missing)
        }
    }

    @Test func alignedWritesReachTheDeviceAndReadBack() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 4 << 20))
        try await withMountedFile(device) { file, _ in
            let pattern = (0..<(128 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let written = try await onThread { try writeBytes(file.path, pattern, at: 1 << 20) }
            #expect(written == pattern.count)
            #expect(device.snapshot(at: 1 << 20, count: pattern.count) == pattern)
            let back = try await onThread { try readBytes(file.path, at: 1 << 20, count: pattern.count) }
            #expect(back == pattern)
        }
    }

    /// Unaligned I/O is done, not refused: reads are widened to sectors, writes are
    /// read-modify-writes that keep the bytes around them.
    @Test func unalignedReadsAndWritesKeepTheBytesAroundThem() async throws {
        let size = 1 << 20
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: UInt64(size)))
        try await withMountedFile(device) { file, _ in
            var model = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) }
            let initial = model
            _ = try await onThread { try writeBytes(file.path, initial, at: 0) }
            var rng = SplitMix(seed: 0xf05e)
            for _ in 0..<200 {
                let offset = Int(rng.next() % UInt64(size - 9000))
                let count = 1 + Int(rng.next() % 9000)
                let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                let n = try await onThread { try writeBytes(file.path, bytes, at: Int64(offset)) }
                #expect(n == count)
                model.replaceSubrange(offset..<(offset + count), with: bytes)
                let readOffset = Int(rng.next() % UInt64(size - 5000))
                let readCount = 1 + Int(rng.next() % 5000)
                let back = try await onThread { try readBytes(file.path, at: Int64(readOffset), count: readCount) }
                #expect(back == Array(model[readOffset..<(readOffset + readCount)]))
            }
            #expect(device.snapshot(at: 0, count: size) == model)
        }
    }

    @Test func theEndOfTheDiskIsTheEndOfTheFile() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        try await withMountedFile(device) { file, _ in
            // A read across the end is short, one from the end empty.
            let tail = try await onThread { try readBytes(file.path, at: (1 << 20) - 100, count: 4096) }
            #expect(tail.count == 100)
            let none = try await onThread { try readBytes(file.path, at: 1 << 20, count: 4096) }
            #expect(none.isEmpty)
            // A write across the end is cut short; one from the end is ENOSPC.
            let short = try await onThread { try writeBytes(file.path, [UInt8](repeating: 0xAB, count: 4096), at: (1 << 20) - 512) }
            #expect(short == 512)
            #expect(device.snapshot(at: (1 << 20) - 512, count: 512) == [UInt8](repeating: 0xAB, count: 512))
            let past = await #expect(throws: Errno.self) { try await onThread { try writeBytes(file.path, [1], at: 1 << 20) } }
            #expect(past == .noSpace)
            // The size is the disk's.
            let truncated = await onThread { truncate(file.path, 4096) == 0 ? 0 : errno }
            #expect(truncated == EPERM)
        }
    }

    @Test func fsyncFlushesAndPunchingAHoleDiscards() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20, canDiscard: true, discardZeroes: true))
        try await withMountedFile(device) { file, _ in
            _ = try await onThread { try writeBytes(file.path, [UInt8](repeating: 0xEE, count: 64 << 10), at: 0) }
            // util-linux's own calls: fsync (sync FILE), PUNCH_HOLE|KEEP_SIZE, mode 0, COLLAPSE_RANGE.
            let sync = try await runTool("sync", [file.path])
            #expect(sync.status == 0, "\(sync)")
            // Whole sectors 1024..<8192 are discarded, bytes 1000..<1024 and 8192..<8200 zeroed.
            let punch = try await runTool("fallocate", ["--punch-hole", "--offset", "1000", "--length", "7200", file.path])
            #expect(punch.status == 0, "\(punch)")
            let allocate = try await runTool("fallocate", ["--offset", "0", "--length", "4096", file.path])
            #expect(allocate.status == 0, "\(allocate)")
            let collapse = try await runTool("fallocate", ["--collapse-range", "--offset", "0", "--length", "4096", file.path])
            #expect(collapse.status != 0 && collapse.output.contains("not supported"), "\(collapse)")
            let bytes = device.snapshot(at: 0, count: 16384)
            #expect(Array(bytes[0..<1000]) == [UInt8](repeating: 0xEE, count: 1000))
            #expect(Array(bytes[1000..<8200]) == [UInt8](repeating: 0, count: 7200))
            #expect(Array(bytes[8200..<16384]) == [UInt8](repeating: 0xEE, count: 16384 - 8200))
        }
    }

    @Test func withoutDiscardPunchingAHoleIsNotSupported() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        try await withMountedFile(device) { file, _ in
            let punch = try await runTool("fallocate", ["--punch-hole", "--offset", "0", "--length", "4096", file.path])
            #expect(punch.status != 0 && punch.output.contains("unsupported"), "\(punch)")
        }
    }

    @Test func aReadOnlyDiskIsAReadOnlyFile() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20, readOnly: true))
        try await withMountedFile(device) { file, _ in
            let status = try await onThread { try fileStatus(file.path) }
            #expect(status.mode == S_IFREG | 0o400)
            let open = await #expect(throws: Errno.self) { try await onThread { try writeBytes(file.path, [1], at: 0) } }
            #expect(open == .readOnlyFileSystem)
            let zeros = try await onThread { try readBytes(file.path, at: 0, count: 4096) }
            #expect(zeros == [UInt8](repeating: 0, count: 4096))
        }
    }

    @Test func umountFromOutsideEndsTheMount() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        let directory = try TemporaryDirectory(prefix: "xenpv-fuse")
        let file = try await BlockDeviceFile.mount(device, at: directory.path)
        #expect(isMountPoint(directory.path))
        // umount(8) says "target is busy" while another process (a parallel test's
        // tool) holds the mount for a moment; a user tries again, and so does this.
        var run = try await runTool("umount", [directory.path])
        _ = try await eventually(every: .milliseconds(200)) {
            guard run.status != 0, isMountPoint(directory.path) else { return true }
            run = try await runTool("umount", [directory.path])
            return false
        }
        if run.status != 0 { file.unmount() }
        #expect(run.status == 0, "\(run)")
        #expect(await file.unmounted(timeout: .seconds(120)))
        #expect(!isMountPoint(directory.path))
        file.unmount()  // after the end: nothing to do, no crash
    }

    @Test func aDeviceWithoutGeometryOrABadNameIsRefused() async throws {
        let directory = try TemporaryDirectory(prefix: "xenpv-fuse")
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        for name in ["", ".", "..", "a/b", String(repeating: "x", count: 256)] {
            let error = await #expect(throws: BlockFileError.self) { try await BlockDeviceFile.mount(device, at: directory.path, name: name) }
            #expect(error?.code == .badName)
        }
        let odd = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1000))
        let error = await #expect(throws: BlockFileError.self) { try await BlockDeviceFile.mount(odd, at: directory.path) }
        #expect(error?.code == .badDevice)
        let nowhere = await #expect(throws: BlockFileError.self) {
            try await BlockDeviceFile.mount(device, at: directory.path("missing"))
        }
        #expect(nowhere?.code == .mount)
        #expect(!isMountPoint(directory.path))
    }
}
