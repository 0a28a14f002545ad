import Foundation
import Glibc
import TestSupport
import Testing

extension ProcessTests {
    /// `xenpv guest disk mount DIR`: a guest process shows its vbd (blkback in a
    /// `xenpv backend` process, over the hypervisor daemon) as the FUSE file DIR/xvda.
    @Suite(.serialized, .enabled(if: FileManager.default.fileExists(atPath: "/dev/fuse") && getuid() == 0
                                    && FileManager.default.isExecutableFile(atPath: "/usr/bin/dd"),
                                 "needs /dev/fuse and root"))
    struct GuestDiskMountTests {
        @Test(.timeLimit(.minutes(3)), arguments: ["umount", "SIGTERM"])
        func aGuestMountsItsVbdAsAFileUntilUmountOrASignal(ending: String) async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let mountpoint = dir + "/mnt"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 16 << 20) == 0)
            try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: false)
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            let backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "mount", mountpoint, "--connect", sock], name: "guest")
            defer {
                guest.sendKill()
                // A killed guest leaves a dead mount behind: detach it.
                if isMountPoint(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            }
            #expect(await guest.waitFor("the vbd is \(mountpoint)/xvda"), "\(guest.output)")
            #expect(isMountPoint(mountpoint))

            let source = dir + "/pattern.bin"
            #expect(FileManager.default.createFile(atPath: source, contents: Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 37) })))
            let dd = try Child(["if=\(source)", "of=\(mountpoint)/xvda", "bs=64k", "seek=3", "conv=notrunc,fsync", "oflag=direct"],
                               name: "dd", executable: "/usr/bin/dd")
            #expect(await dd.waitForExit(seconds: 60) == 0, "\(dd.output)")
            let back = try Child(["if=\(mountpoint)/xvda", "of=\(dir)/back.bin", "bs=1M", "iflag=direct"], name: "dd", executable: "/usr/bin/dd")
            #expect(await back.waitForExit(seconds: 60) == 0, "\(back.output)")

            if ending == "umount" {
                let umount = try Child([mountpoint], name: "umount", executable: "/usr/bin/umount")
                #expect(await umount.waitForExit(seconds: 60) == 0, "\(umount.output)")
            } else {
                guest.terminate()
            }
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            #expect(guest.output.contains("\(mountpoint) unmounted"), "\(guest.output)")
            #expect(!isMountPoint(mountpoint))
            let bytes = try #require(FileManager.default.contents(atPath: image))
            let pattern = try #require(FileManager.default.contents(atPath: source))
            #expect(bytes[(3 << 16)..<((3 << 16) + (1 << 20))] == pattern)
            #expect(FileManager.default.contents(atPath: dir + "/back.bin") == bytes)
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        /// A hypervisor, a backend serving `image`, and a guest showing its vbd as `mnt/xvda`;
        /// `body` may kill the backend and start another (`restartBackend`).
        private func withMountedGuest(imageBytes: Int, _ body: (_ dir: String, _ image: String, _ file: String,
                                                                _ restartBackend: () async throws -> Void) async throws -> Void) async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let mountpoint = dir + "/mnt"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, off_t(imageBytes)) == 0)
            try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: false)
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var backends = [try Child(["backend", "--connect", sock, "--disk", image], name: "backend")]
            defer { backends.forEach { $0.sendKill() } }
            #expect(await backends[0].waitFor("serving"), "\(backends[0].output)")
            let guest = try Child(["guest", "disk", "mount", mountpoint, "--connect", sock], name: "guest")
            defer {
                guest.sendKill()
                if isMountPoint(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            }
            #expect(await guest.waitFor("the vbd is \(mountpoint)/xvda"), "\(guest.output)")
            try await body(dir, image, mountpoint + "/xvda") {
                await backends.last?.kill()
                backends.append(try Child(["backend", "--connect", sock, "--disk", image], name: "backend \(backends.count + 1)"))
            }
            guest.terminate()
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            #expect(!isMountPoint(mountpoint))
            for child in [hv, guest] + backends { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        /// Once the sparse image has gained blocks (`tool`'s first writes have landed), kills
        /// the backend and starts another; says whether `tool` was still running then.
        private func restartBackend(midRunOf tool: Child, image: String, _ restartBackend: () async throws -> Void) async throws {
            let landed = await eventually(60) {
                var st = stat()
                return (stat(image, &st) == 0 && st.st_blocks > 0) || !tool.process.isRunning
            }
            #expect(landed)
            let midRun = tool.process.isRunning
            try await restartBackend()
            print("\(tool.name) still running when the backend was killed: \(midRun)")
        }

        /// fio writes 32 MiB at random through the FUSE file with crc32c headers and verifies
        /// them, while dom0's backend is killed (once the image has blocks) and restarted: the
        /// file's requests wait in blkfront meanwhile, and every block verifies.
        @Test(.timeLimit(.minutes(5)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/fio")))
        func fioVerifiesThroughTheFileAcrossABackendKilledMidRun() async throws {
            try await withMountedGuest(imageBytes: 64 << 20) { _, image, file, restartBackend in
                let fio = try Child(["--name=verify", "--filename=\(file)", "--rw=randwrite", "--bs=4k", "--size=32m",
                                     "--direct=1", "--ioengine=libaio", "--iodepth=16", "--verify=crc32c", "--do_verify=1",
                                     "--verify_fatal=1", "--verify_state_save=0"],
                                    name: "fio", executable: "/usr/bin/fio")
                defer { fio.sendKill() }
                try await self.restartBackend(midRunOf: fio, image: image, restartBackend)
                #expect(await fio.waitForExit(seconds: 120) == 0, "\(fio.output)")
                #expect(fio.output.contains("err= 0"), "\(fio.output)")
                #expect(!fio.output.contains("verify: bad"), "\(fio.output)")
            }
        }

        /// A 64 MiB copy into the FUSE file (direct I/O, fsync at the end) while the backend is
        /// killed and restarted: what the copy reports written is in the image, byte for byte.
        @Test(.timeLimit(.minutes(5)))
        func aCopyIntoTheFileCompletesAcrossABackendKilledMidCopy() async throws {
            let size = 64 << 20
            try await withMountedGuest(imageBytes: size) { dir, image, file, restartBackend in
                var rng = SplitMix(seed: 0xF05E_4E57)
                let bytes = rng.bytes(size, oddWords: true)
                let source = dir + "/source.bin"
                #expect(FileManager.default.createFile(atPath: source, contents: Data(bytes)))
                let dd = try Child(["if=\(source)", "of=\(file)", "bs=1M", "conv=notrunc,fsync", "oflag=direct"],
                                   name: "dd", executable: "/usr/bin/dd")
                defer { dd.sendKill() }
                try await self.restartBackend(midRunOf: dd, image: image, restartBackend)
                #expect(await dd.waitForExit(seconds: 120) == 0, "\(dd.output)")
                #expect(FileManager.default.contents(atPath: image) == Data(bytes))
                let back = dir + "/back.bin"
                let out = try Child(["if=\(file)", "of=\(back)", "bs=1M", "iflag=direct"], name: "dd out", executable: "/usr/bin/dd")
                #expect(await out.waitForExit(seconds: 120) == 0, "\(out.output)")
                #expect(FileManager.default.contents(atPath: back) == Data(bytes))
            }
        }
    }
}
