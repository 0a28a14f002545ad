import BlockViewTestSupport
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
import XenBlockExport
import XenBlockFUSE

/// Whether the tools these tests run are installed (`.ci/run` installs them).
let realToolsInstalled = ["losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "fio", "sha256sum"].allSatisfy { toolPath($0) != nil }

/// A guest's vbd (blkfront on an embedded host, blkback on libaio over an image file) as
/// a FUSE file, used by the kernel (a loop device and ext4 on it) and by fio.
@Suite(.serialized, .timeLimit(.minutes(10)),
       .enabled(if: fuseAvailable && realToolsInstalled, "needs /dev/fuse, root, util-linux, e2fsprogs and fio"))
struct RealToolTests {
    /// A vbd of `bytes` mounted as a file; the vbd is closed afterwards, with no leftovers.
    private func withVbdFile(bytes: Int, readOnly: Bool = false,
                             _ body: (PVDisk, BlockDeviceFile, TemporaryDirectory) async throws -> Void) async throws {
        let disk = try await PVDisk.make(bytes: bytes, readOnly: readOnly)
        try await withCleanup({
            try await withMountedFile(disk.frontend) { file, directory in try await body(disk, file, directory) }
        }, cleanup: {
            let leftovers = try? await disk.close()
            #expect(leftovers?.isEmpty == true, "\(String(describing: leftovers))")
        })
    }

    @Test func ext4OnALoopDeviceOverTheFileKeepsItsFiles() async throws {
        try await withVbdFile(bytes: 128 << 20) { disk, file, directory in
            let attach = try await runTool("losetup", ["--find", "--show", "--direct-io=off", file.path])
            #expect(attach.status == 0, "\(attach)")
            let loop = attach.output.trimmingCharacters(in: .whitespacesAndNewlines)
            guard attach.status == 0, loop.hasPrefix("/dev/loop") else { return }
            let target = directory.path("ext4")
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
            let sums = directory.path("sums")
            try await withCleanup({
                let mkfs = try await runTool("mkfs.ext4", ["-q", "-F", loop])
                #expect(mkfs.status == 0, "\(mkfs)")
                let mount = try await runTool("mount", [loop, target])
                #expect(mount.status == 0, "\(mount)")
                // A tree of files of many sizes, and their checksums kept outside.
                let write = try await shell("""
                    set -e; cd \(target); mkdir -p a/b/c d
                    i=1; while [ $i -le 60 ]; do head -c $((i * 7919)) /dev/urandom > a/f$i; i=$((i + 1)); done
                    dd if=/dev/urandom of=a/b/big bs=1M count=16 status=none
                    dd if=/dev/urandom of=a/b/c/odd bs=4093 count=301 status=none
                    ln -s ../a/f7 d/link; : > d/empty
                    find . -type f | sort | xargs sha256sum > \(sums)
                    """)
                #expect(write.status == 0, "\(write)")
                let unmount = try await runTool("umount", [target])
                #expect(unmount.status == 0, "\(unmount)")
                let check = try await runTool("e2fsck", ["-fn", loop])
                #expect(check.status == 0, "e2fsck finds the file system clean: \(check)")
                let again = try await runTool("mount", [loop, target])
                #expect(again.status == 0, "\(again)")
                let compare = try await shell("cd \(target) && sha256sum --quiet -c \(sums) && [ $(wc -l < \(sums)) -eq 63 ]")
                #expect(compare.status == 0, "every file reads back with its checksum: \(compare)")
                let last = try await runTool("umount", [target])
                #expect(last.status == 0, "\(last)")
            }, cleanup: {
                if isMountPoint(target) { _ = try? await runTool("umount", [target]) }
                let detach = try? await runTool("losetup", ["-d", loop])
                #expect(detach?.status == 0, "\(String(describing: detach))")
                // The loop device lets go of the file asynchronously: wait until it has.
                _ = await eventually(60, every: .milliseconds(50)) {
                    let list = try? await runTool("losetup", ["-j", file.path])
                    return list?.output.isEmpty ?? true
                }
            })
            // The file system is in the image, where blkback put it.
            let image = try await runTool("e2fsck", ["-fn", disk.image])
            #expect(image.status == 0, "\(image)")
        }
    }

    @Test func fioWritesRandomlyAndVerifies() async throws {
        try await withVbdFile(bytes: 64 << 20) { _, file, _ in
            let run = try await runTool("fio", ["--name=verify", "--filename=\(file.path)", "--rw=randwrite", "--bs=4k",
                                                "--size=32M", "--direct=1", "--ioengine=psync", "--verify=crc32c",
                                                "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
                                                "--output-format=json"])
            #expect(run.status == 0, "\(run)")
            let text = run.output
            let json = text.firstIndex(of: "{").flatMap { try? JSONSerialization.jsonObject(with: Data(text[$0...].utf8)) } as? [String: Any]
            let job = (json?["jobs"] as? [[String: Any]])?.first
            #expect(job?["error"] as? Int == 0, "\(text)")
            #expect((job?["write"] as? [String: Any])?["io_bytes"] as? Int == 32 << 20, "\(text)")
            #expect((job?["read"] as? [String: Any])?["io_bytes"] as? Int == 32 << 20, "the verify pass read everything back: \(text)")
        }
    }

    @Test func aReadOnlyVbdsFileRefusesWrites() async throws {
        try await withVbdFile(bytes: 16 << 20, readOnly: true) { _, file, _ in
            let write = try await runTool("dd", ["if=/dev/zero", "of=\(file.path)", "bs=4k", "count=1", "conv=notrunc"])
            #expect(write.status != 0 && write.output.contains("Read-only file system"), "\(write)")
            let read = try await runTool("dd", ["if=\(file.path)", "of=/dev/null", "bs=1M", "iflag=direct"])
            #expect(read.status == 0 && read.output.contains("16777216 bytes"), "\(read)")
        }
    }

    @Test func unalignedWritesThroughDdAreReadModifyWrites() async throws {
        try await withVbdFile(bytes: 16 << 20) { disk, file, directory in
            let source = directory.path("odd.bin")
            try Data((0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }).write(to: URL(fileURLWithPath: source))
            // 10000 bytes at offset 1234 (in one write): neither end is on a sector.
            let write = try await runTool("dd", ["if=\(source)", "of=\(file.path)", "bs=10000", "seek=1234", "oflag=seek_bytes",
                                                 "conv=notrunc,fsync"])
            #expect(write.status == 0, "\(write)")
            let compare = try await runTool("cmp", ["-n", "10000", "-i", "0:1234", source, disk.image])
            #expect(compare.status == 0, "\(compare)")
            // The bytes around it are still zeros.
            let before = try await runTool("cmp", ["-n", "1234", disk.image, "/dev/zero"])
            #expect(before.status == 0, "\(before)")
            let after = try await runTool("cmp", ["-n", "100000", "-i", "11234:0", disk.image, "/dev/zero"])
            #expect(after.status == 0, "\(after)")
        }
    }
}
