import Foundation
import Glibc
import TestSupport
import Testing

extension ProcessTests {
    /// `xenpv guest disk serve --nbd`: a guest process serves its vbd (blkback in a
    /// `xenpv backend` process, over the hypervisor daemon) to QEMU's and libnbd's clients.
    @Suite(.serialized, .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-io")
                                    && FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdinfo"),
                                 "needs qemu-utils and libnbd-bin"))
    struct GuestDiskServeTests {
        /// With the backend's `--disk` the image file, and an `nbdkit file` export of it
        /// (blkback on the NBD engine: the whole way is NBD client, PV path, NBD server).
        @Test(.timeLimit(.minutes(5)), arguments: [false, true])
        func aGuestServesItsVbdToQemuIoAndNbdinfo(_ throughNBDKit: Bool) async throws {
            if throughNBDKit && !FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit") { return }
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let nbd = dir + "/nbd.sock"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 16 << 20) == 0)
            var disk = image
            var kit: Child?
            defer { kit?.sendKill() }
            if throughNBDKit {
                kit = try await Child.nbdkitFile(image, socket: dir + "/kit.sock")
                disk = "nbd+unix:///?socket=\(dir)/kit.sock"
            }
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            let backend = try Child(["backend", "--connect", sock, "--disk", disk], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "serve", "--connect", sock, "--nbd", "unix:" + nbd], name: "guest")
            defer { guest.sendKill() }
            #expect(await guest.waitFor("serving xvda on unix:\(nbd)"), "\(guest.output)")
            // The logger's "nbd: serving" notice can come before the command's own line, which
            // names the URI: wait for that line too, not only look.
            #expect(await guest.waitFor("nbd+unix:///?socket=\(nbd)"), "\(guest.output)")

            let uri = "nbd+unix:///?socket=\(nbd)"
            let info = try Child(["--json", uri], name: "nbdinfo", executable: "/usr/bin/nbdinfo")
            #expect(await info.waitForExit(seconds: 60) == 0, "\(info.output)")
            #expect(info.output.contains("\"export-size\": \(16 << 20)"), "\(info.output)")
            let io = try Child(["-f", "raw", "-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k",
                                "-c", "write -P 0x3c 15M 1M", "-c", "flush", "-c", "read -P 0x3c 15M 1M", uri],
                               name: "qemu-io", executable: "/usr/bin/qemu-io")
            #expect(await io.waitForExit(seconds: 60) == 0, "\(io.output)")
            #expect(!io.output.contains("failed"), "\(io.output)")

            guest.terminate()
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            #expect(guest.output.contains("export closed after 2 connections"), "\(guest.output)")
            #expect(!FileManager.default.fileExists(atPath: nbd))
            let bytes = try #require(FileManager.default.contents(atPath: image))
            #expect(bytes[0..<65536].allSatisfy { $0 == 0xAB })
            #expect(bytes[(15 << 20)..<(16 << 20)].allSatisfy { $0 == 0x3C })
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
            if throughNBDKit { #expect(backend.output.contains("through NBD (\(16 << 20) bytes)"), "\(backend.output)") }
        }

        /// dom0's backend is killed while the export serves; an `nbdcopy` started meanwhile
        /// waits (its writes queue in blkfront) and completes once a new backend is up; what
        /// comes back out, and the image, equal what went in.
        @Test(.timeLimit(.minutes(5)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdcopy")))
        func nbdcopyCompletesAcrossABackendRestart() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let nbd = dir + "/nbd.sock"
            let size = 16 << 20
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, off_t(size)) == 0)
            var rng = SplitMix(seed: 0xB10C)
            let bytes = rng.bytes(size)
            let source = dir + "/source.bin"
            #expect(FileManager.default.createFile(atPath: source, contents: Data(bytes)))

            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "serve", "--connect", sock, "--nbd", "unix:" + nbd], name: "guest")
            defer { guest.sendKill() }
            #expect(await guest.waitFor("serving xvda"), "\(guest.output)")

            await backend.kill()
            let uri = "nbd+unix:///?socket=\(nbd)"
            let copyIn = try Child([source, uri], name: "nbdcopy in", executable: "/usr/bin/nbdcopy")
            defer { copyIn.sendKill() }
            // Without a backend nothing can complete: the copy is still waiting when the new one starts.
            try await Task.sleep(for: .milliseconds(500))
            #expect(copyIn.process.isRunning, "nbdcopy finished without a backend: \(copyIn.output)")
            backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend 2")
            #expect(await copyIn.waitForExit(seconds: 90) == 0, "\(copyIn.output)\n--- guest:\n\(guest.output)")
            let back = dir + "/back.bin"
            let copyOut = try Child([uri, back], name: "nbdcopy out", executable: "/usr/bin/nbdcopy")
            #expect(await copyOut.waitForExit(seconds: 90) == 0, "\(copyOut.output)")
            #expect(FileManager.default.contents(atPath: back) == Data(bytes))
            #expect(FileManager.default.contents(atPath: image) == Data(bytes))
            guest.terminate()
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        /// The backend is killed while an `nbdcopy` of 64 MiB runs (once its first writes are in
        /// the image) and a new one started: the copy completes and every byte is intact.
        /// Whether the kill lands mid-copy depends on the machine's speed (it is printed);
        /// what is checked holds either way.
        @Test(.timeLimit(.minutes(5)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdcopy")))
        func nbdcopyCompletesAcrossABackendKilledMidCopy() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let nbd = dir + "/nbd.sock"
            let size = 64 << 20
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, off_t(size)) == 0)
            var rng = SplitMix(seed: 0x64_4D69_42)
            let bytes = rng.bytes(size, oddWords: true)
            let source = dir + "/source.bin"
            #expect(FileManager.default.createFile(atPath: source, contents: Data(bytes)))

            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "serve", "--connect", sock, "--nbd", "unix:" + nbd], name: "guest")
            defer { guest.sendKill() }
            #expect(await guest.waitFor("serving xvda"), "\(guest.output)")

            let uri = "nbd+unix:///?socket=\(nbd)"
            let copyIn = try Child([source, uri], name: "nbdcopy in", executable: "/usr/bin/nbdcopy")
            defer { copyIn.sendKill() }
            // Some of the copy is in the image (every source word is odd, so nonzero).
            let image0 = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
            let started = await eventually(60) {
                try? image0.seek(toOffset: 0)
                return (try? image0.read(upToCount: 8))??.contains { $0 != 0 } == true || !copyIn.process.isRunning
            }
            #expect(started)
            try image0.close()
            let midCopy = copyIn.process.isRunning
            await backend.kill()
            print("nbdcopy still running when the backend was killed: \(midCopy)")
            backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend 2")
            #expect(await copyIn.waitForExit(seconds: 90) == 0, "\(copyIn.output)\n--- guest:\n\(guest.output)")
            let back = dir + "/back.bin"
            let copyOut = try Child([uri, back], name: "nbdcopy out", executable: "/usr/bin/nbdcopy")
            #expect(await copyOut.waitForExit(seconds: 90) == 0, "\(copyOut.output)")
            #expect(FileManager.default.contents(atPath: back) == Data(bytes))
            #expect(FileManager.default.contents(atPath: image) == Data(bytes))
            guest.terminate()
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        /// `fio --ioengine=nbd` writes 32 MiB at random with crc32c headers and verifies them,
        /// while the backend is killed (once the image has blocks) and restarted.
        @Test(.timeLimit(.minutes(5)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/fio")))
        func fioVerifiesAcrossABackendKilledMidRun() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            let nbd = dir + "/nbd.sock"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 64 << 20) == 0)
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "serve", "--connect", sock, "--nbd", "unix:" + nbd], name: "guest")
            defer { guest.sendKill() }
            #expect(await guest.waitFor("serving xvda"), "\(guest.output)")

            let fio = try Child(["--name=verify", "--ioengine=nbd", "--uri=nbd+unix:///?socket=\(nbd)", "--rw=randwrite",
                                 "--bs=4k", "--iodepth=16", "--size=32m", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"],
                                name: "fio", executable: "/usr/bin/fio")
            defer { fio.sendKill() }
            // The sparse image gains blocks as the first writes land.
            let started = await eventually(60) {
                var st = stat()
                return (stat(image, &st) == 0 && st.st_blocks > 0) || !fio.process.isRunning
            }
            #expect(started)
            let midRun = fio.process.isRunning
            await backend.kill()
            print("fio still running when the backend was killed: \(midRun)")
            backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend 2")
            #expect(await fio.waitForExit(seconds: 120) == 0, "\(fio.output)\n--- guest:\n\(guest.output)")
            #expect(fio.output.contains("err= 0"), "\(fio.output)")
            #expect(!fio.output.contains("verify: bad"), "\(fio.output)")
            guest.terminate()
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            for child in [hv, backend, guest] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        @Test(.timeLimit(.minutes(5)))
        func serveNeedsAnAddressItCanParse() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let noAddress = try Child(["guest", "disk", "serve", "--connect", dir], name: "guest")
            #expect(await noAddress.waitForExit(seconds: 30) != 0)
            #expect(noAddress.output.contains("serve needs --nbd"), "\(noAddress.output)")
            let badAddress = try Child(["guest", "disk", "serve", "--connect", dir, "--nbd", "http://x"], name: "guest")
            #expect(await badAddress.waitForExit(seconds: 30) != 0)
            #expect(badAddress.output.contains("neither unix:PATH nor tcp:HOST:PORT"), "\(badAddress.output)")
        }
    }
}
