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
        private func mounted(_ directory: String) -> Bool {
            let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first.map(String.init) == directory }
        }

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
            let hv = try Child(["hypervisor", "--socket", sock], name: "hypervisor")
            defer { hv.kill() }
            #expect(await hv.waitFor("listening"), "\(hv.output)")
            let backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.kill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "mount", mountpoint, "--connect", sock], name: "guest")
            defer {
                guest.kill()
                // A killed guest leaves a dead mount behind: detach it.
                if mounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            }
            #expect(await guest.waitFor("the vbd is \(mountpoint)/xvda"), "\(guest.output)")
            #expect(mounted(mountpoint))

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
            #expect(!mounted(mountpoint))
            let bytes = try #require(FileManager.default.contents(atPath: image))
            let pattern = try #require(FileManager.default.contents(atPath: source))
            #expect(bytes[(3 << 16)..<((3 << 16) + (1 << 20))] == pattern)
            #expect(FileManager.default.contents(atPath: dir + "/back.bin") == bytes)
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }
    }
}
