import CXen
import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenSimulatorDaemon
import XenBus
import XenStore
import XenToolstack

/// `xenpv create/list/console/shutdown/destroy` as a person runs them: an in-process
/// hypervisor daemon (whose report the test reads), `xenpv backend` without --disk, and
/// guests that are the built `xenpv guest disk …` started by `xenpv create`.
@Suite(.timeLimit(.minutes(10)), .serialized)
struct ToolstackCommandTests {
    /// A daemon, a backend serving vbds from their params, and the test's store connection.
    final class Host {
        let f: DaemonFixture
        let backend: Child
        let store: XenStoreClient
        var socket: String { f.socket }
        var dir: String { f.dir }

        init() async throws {
            f = try DaemonFixture()
            backend = try Child(["backend", "--connect", f.socket], name: "backend")
            store = try XenStoreClient(socketPath: f.socket + ".xenstore")
            #expect(await backend.waitFor("serving", seconds: 180), "\(backend.output)")
        }

        /// Runs one `xenpv` command to its end.
        func run(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
            let child = try Child(arguments + ["--connect", socket], name: arguments.first ?? "xenpv")
            let status = await child.waitForExit(seconds: 180)
            return (status, child.output)
        }

        /// A zero-filled image of `bytes` bytes.
        func image(_ name: String, bytes: Int = 4 << 20) -> String {
            let path = dir + "/" + name
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            _ = truncate(path, off_t(bytes))
            return path
        }

        /// A config file whose kernel is the built xenpv running `extra`.
        func config(_ name: String, disks: [String], extra: String) -> String {
            let path = dir + "/" + name + ".cfg"
            let text = """
                name = "\(name)"
                kernel = "\(xenpvPath())"
                extra = "\(extra)"
                memory = 16
                disk = [ \(disks.map { "'\($0)'" }.joined(separator: ", ")) ]
                on_poweroff = "destroy"
                """
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            return path
        }

        var consoleDirectory: String { socket + ".state/console" }

        /// Waits until the domain's console log holds `text`.
        func consoleShows(_ name: String, _ text: String) async -> Bool {
            await eventually(180) {
                let log = (try? String(contentsOfFile: consoleDirectory + "/guest-\(name).log", encoding: .utf8)) ?? ""
                return log.contains(text)
            }
        }

        /// The domain id `xenpv create` printed.
        static func domid(_ output: String) -> UInt16? {
            guard let range = output.range(of: "(id=") else { return nil }
            return UInt16(output[range.upperBound...].prefix { $0.isNumber })
        }

        /// Nothing of domain `id` is left: not in the daemon, not in the store (home,
        /// backend directories, /vm), and no mapping or port held for it.
        func nothingLeft(of id: UInt16) async -> Bool {
            await eventually(180) {
                let report = f.daemon.report()
                let home = (try? await store.exists("/local/domain/\(id)")) ?? true
                var backends = false
                for type in ["vbd", "vif"] {
                    let present = (try? await store.exists("/local/domain/0/backend/\(type)/\(id)")) ?? true
                    backends = backends || present
                }
                let vms = ((try? await store.directory("/vm")) ?? []).count
                return report.domains == [.dom0] && report.mappings == 0 && report.ports == 0 && report.processes == 1 && !home
                    && !backends && vms == 0
            }
        }

        /// Closes the store connection, kills the backend and awaits the daemon's stop.
        func stop() async {
            store.close()
            backend.sendKill()
            await f.stop()
        }
    }

    /// GuestDisk's pattern (offset and seed), to check an image from outside the guest.
    static func pattern(_ o: UInt64, seed: UInt8) -> UInt8 {
        UInt8(truncatingIfNeeded: (o &* 0x9E37_79B1) >> 11) ^ UInt8(truncatingIfNeeded: o >> 9) ^ seed
    }

    @Test func createRunsAProgramOnTwoDisksThenShutdownEndsIt() async throws {
        let host = try await Host()
        try await withCleanup {
            let a = host.image("a.img"), b = host.image("b.img")
            let cfg = host.config(
                "twodisks", disks: ["format=raw, vdev=xvda, access=rw, engine=io_uring, cache=writeback, target=\(a)", "\(b),raw,xvdb,r,engine=libaio"],
                extra: "guest disk write --length 65536 --seed 9 --vdev xvda --vdev xvdb --until-shutdown")
            let created = try await host.run(["create", cfg])
            #expect(created.status == 0, "\(created.output)")
            let id = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("twodisks", "waiting for a shutdown request"))

            // The job: xvda written, xvdb (read-only) refused.
            let console = try await host.run(["console", "twodisks"])
            #expect(console.status == 0)
            #expect(console.output.contains("wrote and flushed 65536 bytes at 0 on xvda"), "\(console.output)")
            #expect(console.output.contains("xvdb: write at 0:") && console.output.contains("read-only"), "\(console.output)")
            let byID = try await host.run(["console", "\(id)"])
            #expect(byID.output == console.output)
            let aBytes = try #require(FileManager.default.contents(atPath: a))
            #expect((0..<65536).allSatisfy { aBytes[$0] == Self.pattern(UInt64($0), seed: 9) })
            let bBytes = try #require(FileManager.default.contents(atPath: b))
            #expect(bBytes.allSatisfy { $0 == 0 })
            // Each disk through the engine its spec named (io_uring's default would differ for
            // one of them: libaio on tmpfs, io_uring elsewhere).
            #expect(host.backend.output.contains("serves \(a) through io_uring, cache=writeback"), "\(host.backend.output)")
            #expect(host.backend.output.contains("serves \(b) through libaio, cache=none, read-only"), "\(host.backend.output)")
            // And each image open as its spec's cache= says: xvda through the page cache, xvdb
            // with O_DIRECT (the default; the test's file system, ext4 or tmpfs, allows it).
            let pid = host.backend.process.processIdentifier
            let aFlags = openFlags(of: pid, path: a), bFlags = openFlags(of: pid, path: b)
            #expect(!aFlags.isEmpty && aFlags.allSatisfy { $0 & cxen_o_direct() == 0 }, "\(aFlags)")
            #expect(!bFlags.isEmpty && bFlags.allSatisfy { $0 & cxen_o_direct() != 0 }, "\(bFlags)")

            // list: xl's columns and the domain.
            let list = try await host.run(["list"])
            #expect(list.status == 0)
            #expect(list.output.contains("Name") && list.output.contains("VCPUs") && list.output.contains("Time(s)"), "\(list.output)")
            let line = list.output.split(separator: "\n").first { $0.hasPrefix("twodisks ") }.map(String.init) ?? ""
            #expect(line.split(separator: " ").prefix(3) == ["twodisks", "\(id)", "16"], "\(list.output)")

            // shutdown: the guest acknowledges, leaves, and nothing is left.
            let shutdown = try await host.run(["shutdown", "twodisks", "--timeout", "180"])
            #expect(shutdown.status == 0, "\(shutdown.output)")
            #expect(shutdown.output.contains("Domain twodisks shut down"), "\(shutdown.output)")
            #expect(await host.consoleShows("twodisks", "poweroff requested by the toolstack"))
            #expect(await host.nothingLeft(of: id))
            #expect(host.backend.sanitizerClean, "\(host.backend.output)")
        } cleanup: {
            await host.stop()
        }
    }

    /// A guest without the control driver ignores the request: shutdown destroys it
    /// after its bound; destroy ends another at once.
    @Test func shutdownAndDestroyEndAGuestThatIgnoresTheRequest() async throws {
        let host = try await Host()
        try await withCleanup {
            let image = host.image("c.img")
            let cfg = host.config("deaf", disks: ["\(image),raw,xvda,w"],
                                  extra: "guest disk write --length 65536 --until-shutdown --no-control")
            let created = try await host.run(["create", cfg])
            let id = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("deaf", "waiting for a shutdown request"))
            let shutdown = try await host.run(["shutdown", "deaf", "--timeout", "2"])
            #expect(shutdown.status == 0, "\(shutdown.output)")
            #expect(shutdown.output.contains("did not shut down"), "\(shutdown.output)")
            #expect(await host.nothingLeft(of: id))

            let again = try await host.run(["create", cfg])
            let second = try #require(Host.domid(again.output), "\(again.output)")
            #expect(await host.consoleShows("deaf", "waiting for a shutdown request"))
            let record = try #require(StateDirectory.beside(socket: host.socket).record("deaf"))
            let program = try #require(record.program)
            #expect(program.isRunning)
            let destroy = try await host.run(["destroy", "deaf"])
            #expect(destroy.status == 0, "\(destroy.output)")
            #expect(!program.isRunning)
            #expect(await host.nothingLeft(of: second))
            #expect(StateDirectory.beside(socket: host.socket).record("deaf") == nil)
        } cleanup: {
            await host.stop()
        }
    }

    /// `create -c` follows the console until the program exits; `shutdown --reboot` of a
    /// domain whose on_reboot is restart creates it again from its config.
    @Test func consoleFollowsAndRebootRestarts() async throws {
        let host = try await Host()
        try await withCleanup {
            let image = host.image("r.img")
            let job = host.config("job", disks: ["\(image),raw,xvda,w"], extra: "guest disk write --length 65536 --seed 3")
            let followed = try await host.run(["create", job, "-c"])
            #expect(followed.status == 0, "\(followed.output)")
            #expect(followed.output.contains("wrote and flushed 65536 bytes at 0"), "\(followed.output)")
            let id = try #require(Host.domid(followed.output))
            #expect(await host.nothingLeft(of: id))

            let path = host.config("phoenix", disks: ["\(image),raw,xvda,w"], extra: "guest disk read --length 4096 --until-shutdown")
            let text = try String(contentsOfFile: path, encoding: .utf8) + "\non_reboot = \"restart\"\n"
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            let created = try await host.run(["create", path])
            let first = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("phoenix", "waiting for a shutdown request"))
            let reboot = try await host.run(["shutdown", "phoenix", "--reboot", "--timeout", "180"])
            #expect(reboot.status == 0, "\(reboot.output)")
            #expect(reboot.output.contains("Restarted domain phoenix"), "\(reboot.output)")
            let second = try #require(Host.domid(reboot.output.components(separatedBy: "Restarted").last ?? ""), "\(reboot.output)")
            #expect(second != first)
            #expect(await host.consoleShows("phoenix", "reboot requested by the toolstack"))
            let list = try await host.run(["list"])
            #expect(list.output.contains("phoenix"), "\(list.output)")
            let destroyed = try await host.run(["destroy", "phoenix"])
            #expect(destroyed.status == 0, "\(destroyed.output)")
            #expect(await host.nothingLeft(of: second))
        } cleanup: {
            await host.stop()
        }
    }

    /// block-attach plugs a second disk into a running domain (the backend serves it
    /// from its params and waits for the frontend), block-list shows it, a second
    /// attach of the vdev or of a disk another domain writes is refused, block-detach
    /// removes it; then shutdown leaves nothing.
    @Test func blockAttachListAndDetachOnARunningDomain() async throws {
        let host = try await Host()
        try await withCleanup {
            let root = host.image("root.img"), extra = host.image("extra.img"), other = host.image("other.img")
            let created = try await host.run(["create", host.config("hot", disks: ["\(root),raw,xvda,w"],
                                                                  extra: "guest disk read --length 4096 --hotplug")])
            let id = try #require(Host.domid(created.output), "\(created.output)")
            let busy = try await host.run(["create", host.config("busy", disks: ["\(other),raw,xvda,w"],
                                                                   extra: "guest disk read --length 4096 --until-shutdown")])
            #expect(busy.status == 0, "\(busy.output)")
            #expect(await host.consoleShows("hot", "following hotplugged vbds"))

            let attach = try await host.run(["block-attach", "hot", "format=raw, vdev=xvdb, access=rw, target=\(extra)"])
            #expect(attach.status == 0, "\(attach.output)")
            let backend = "/local/domain/0/backend/vbd/\(id)/51728"
            #expect(try await host.store.read(backend + "/params") == extra)
            // The running guest sees the new disk (FrontendHotplug), connects it and reads from it.
            #expect(await host.consoleShows("hot", "vbd 51728 plugged"))
            #expect(await host.consoleShows("hot", "read 4096 bytes at 0, checksum"))
            #expect(await host.consoleShows("hot", "on vbd 51728"))
            let list = try await host.run(["block-list", "hot"])
            #expect(list.status == 0 && list.output.contains("51712") && list.output.contains("51728"), "\(list.output)")
            let again = try await host.run(["block-attach", "hot", "\(extra),raw,xvdb,r"])
            #expect(again.status == 1 && again.output.contains("xvdb already"), "\(again.output)")
            let stolen = try await host.run(["block-attach", "hot", "\(other),raw,xvdc,w"])
            #expect(stolen.status == 1 && stolen.output.contains("attached read-write"), "\(stolen.output)")

            let detach = try await host.run(["block-detach", "hot", "xvdb", "--timeout", "5"])
            #expect(detach.status == 0, "\(detach.output)")
            #expect(try await !host.store.exists(backend))
            #expect(try await !host.store.exists("/local/domain/\(id)/device/vbd/51728"))
            #expect(await host.consoleShows("hot", "vbd 51728 unplugged"))
            let after = try await host.run(["block-list", "hot"])
            #expect(after.output.contains("51712") && !after.output.contains("51728"), "\(after.output)")

            for name in ["hot", "busy"] {
                let shutdown = try await host.run(["shutdown", name, "--timeout", "180"])
                #expect(shutdown.status == 0, "\(shutdown.output)")
            }
            #expect(await host.nothingLeft(of: id))
        } cleanup: {
            await host.stop()
        }
    }

    /// block-detach --force removes a disk under a guest that is writing to it: the
    /// guest's I/O fails cleanly (the frontend is closed, no hang), the guest goes on and
    /// shuts down when asked, and nothing is left.
    @Test func blockDetachForceFailsTheGuestsIOCleanly() async throws {
        let host = try await Host()
        try await withCleanup {
            // The root disk is too small for the job, which fails on it at once (and the guest
            // goes on); on the hot disk it is a slow stream (1024 chunks, 200 ms apart), so the
            // detach surely comes in its middle.
            let root = host.image("root.img", bytes: 1 << 20), extra = host.image("extra.img")
            let created = try await host.run(["create", host.config(
                "forced", disks: ["\(root),raw,xvda,w"],
                extra: "guest disk write --vdev xvda --length 4194304 --chunk 4096 --interval-ms 200 --timeout 900 --hotplug")])
            let id = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("forced", "following hotplugged vbds"))
            let attach = try await host.run(["block-attach", "forced", "\(extra),raw,xvdb,w"])
            #expect(attach.status == 0, "\(attach.output)")
            #expect(await host.consoleShows("forced", "written 8192/4194304"))
            let detach = try await host.run(["block-detach", "forced", "xvdb", "--force"])
            #expect(detach.status == 0, "\(detach.output)")
            #expect(await host.consoleShows("forced", "vbd 51728: write at"), "the guest's write did not fail")
            #expect(await host.consoleShows("forced", "block frontend shut down"))
            #expect(try await !host.store.exists("/local/domain/0/backend/vbd/\(id)/51728"))
            let shutdown = try await host.run(["shutdown", "forced", "--timeout", "180"])
            #expect(shutdown.status == 0 && shutdown.output.contains("Domain forced shut down"), "\(shutdown.output)")
            #expect(await host.nothingLeft(of: id))
        } cleanup: {
            await host.stop()
        }
    }

    /// network-attach plugs vifs into a running domain with the keys the backend's hotplug
    /// reads (script, bridge, ip, mac in dom0's backend directory) at the next free devid;
    /// network-list shows them; bad keys are refused before anything is written;
    /// network-detach by devid and by MAC removes both halves; then shutdown leaves nothing.
    @Test func networkAttachListAndDetachOnARunningDomain() async throws {
        let host = try await Host()
        try await withCleanup {
            let root = host.image("root.img")
            let created = try await host.run(["create", host.config("net", disks: ["\(root),raw,xvda,w"],
                                                                  extra: "guest disk read --length 4096 --until-shutdown")])
            let id = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("net", "waiting for a shutdown request"))

            let routed = try await host.run(["network-attach", "net", "mac=00:16:3e:01:02:03", "ip=10.81.0.5", "script=vif-route"])
            #expect(routed.status == 0 && routed.output.contains("vif 0"), "\(routed.output)")
            let bridged = try await host.run(["network-attach", "net", "bridge=xenbr7", "script=/etc/xen/scripts/vif-bridge"])
            #expect(bridged.status == 0 && bridged.output.contains("vif 1"), "\(bridged.output)")
            let be0 = "/local/domain/0/backend/vif/\(id)/0", be1 = "/local/domain/0/backend/vif/\(id)/1"
            #expect(try await host.store.read(be0 + "/script") == "vif-route")
            #expect(try await host.store.read(be0 + "/ip") == "10.81.0.5")
            #expect(try await host.store.read(be0 + "/mac") == "00:16:3e:01:02:03")
            #expect(try await host.store.read(be1 + "/script") == "vif-bridge")
            #expect(try await host.store.read(be1 + "/bridge") == "xenbr7")
            let list = try await host.run(["network-list", "net"])
            #expect(list.status == 0 && list.output.contains("00:16:3e:01:02:03") && list.output.contains("\n1 "), "\(list.output)")

            for bad in [["script=../../bin/sh"], ["ip=300.1.1.1"], ["bridge=a/b"], ["mac=01:00:00:00:00:01"], ["colour=red"]] {
                let refused = try await host.run(["network-attach", "net"] + bad)
                #expect(refused.status == 1, "\(bad): \(refused.output)")
            }
            #expect(try await !host.store.exists("/local/domain/0/backend/vif/\(id)/2"))
            let missing = try await host.run(["network-detach", "net", "7"])
            #expect(missing.status == 1 && missing.output.contains("no vif"), "\(missing.output)")

            let byMAC = try await host.run(["network-detach", "net", "00:16:3e:01:02:03", "--timeout", "5"])
            #expect(byMAC.status == 0, "\(byMAC.output)")
            let byID = try await host.run(["network-detach", "net", "1", "--timeout", "5"])
            #expect(byID.status == 0, "\(byID.output)")
            for dev in ["0", "1"] {
                #expect(try await !host.store.exists("/local/domain/0/backend/vif/\(id)/\(dev)"))
                #expect(try await !host.store.exists("/local/domain/\(id)/device/vif/\(dev)"))
            }
            let shutdown = try await host.run(["shutdown", "net", "--timeout", "180"])
            #expect(shutdown.status == 0, "\(shutdown.output)")
            #expect(await host.nothingLeft(of: id))
        } cleanup: {
            await host.stop()
        }
    }

    /// A kernel that fails at once is reported by create (status 1, how it ended and its
    /// console's last line), and its domain is destroyed; `--watch` bounds the look, so
    /// the test does not depend on how fast the program fails.
    @Test func createReportsAKernelThatFailsAtOnce() async throws {
        let host = try await Host()
        try await withCleanup {
            let image = host.image("f.img")
            let cfg = host.config("doomed", disks: ["\(image),raw,xvda,w"], extra: "guest disk write --length 7")
            let created = try await host.run(["create", cfg, "--watch", "180"])
            #expect(created.status == 1, "\(created.output)")
            #expect(created.output.contains("exited with status") && created.output.contains("--length must be"), "\(created.output)")
            #expect(!created.output.contains("Started domain"), "\(created.output)")
            #expect(StateDirectory.beside(socket: host.socket).record("doomed") == nil)
            #expect(await eventually(180) { host.f.daemon.report().domains == [.dom0] }, "\(host.f.daemon.report())")
            let list = try await host.run(["list"])
            #expect(!list.output.contains("doomed"), "\(list.output)")
        } cleanup: {
            await host.stop()
        }
    }

    /// A disk spec's target may be an NBD export's URI (here `nbdkit file` on a Unix
    /// socket): blkback serves it through its NBD engine, and the guest's writes land in
    /// the image behind the server.
    @Test func createServesADiskFromAnNBDExport() async throws {
        let host = try await Host()
        let image = host.image("remote.img")
        let kit = try await Child.nbdkitFile(image, socket: host.dir + "/kit.sock")
        try await withCleanup {
            let uri = "nbd+unix:///?socket=\(host.dir)/kit.sock"
            let cfg = host.config("remote", disks: ["vdev=xvda, access=rw, target=\(uri)"],
                                  extra: "guest disk write --length 65536 --seed 5 --vdev xvda --until-shutdown")
            let created = try await host.run(["create", cfg])
            #expect(created.status == 0, "\(created.output)")
            let id = try #require(Host.domid(created.output), "\(created.output)")
            #expect(await host.consoleShows("remote", "waiting for a shutdown request"))
            let console = try await host.run(["console", "remote"])
            #expect(console.output.contains("wrote and flushed 65536 bytes at 0 on xvda"), "\(console.output)")
            #expect(host.backend.output.contains("serves \(uri) through NBD"), "\(host.backend.output)")
            let bytes = try #require(FileManager.default.contents(atPath: image))
            #expect((0..<65536).allSatisfy { bytes[$0] == Self.pattern(UInt64($0), seed: 5) })
            let shutdown = try await host.run(["shutdown", "remote", "--timeout", "180"])
            #expect(shutdown.status == 0, "\(shutdown.output)")
            #expect(await host.nothingLeft(of: id))
        } cleanup: {
            kit.sendKill()
            await host.stop()
        }
    }

    /// Hostile and mistaken configs: a missing or relative target, a w disk in use,
    /// and w! sharing on purpose; and a vbd whose params dom0 made bad fails alone.
    @Test func badDisksAreRefusedAndWritableSharingNeedsWBang() async throws {
        let host = try await Host()
        try await withCleanup {
            let idle = "guest disk read --length 4096 --until-shutdown"
            for target in ["/nonexistent/disk.img", "relative.img"] {
                let bad = try await host.run(["create", host.config("bad", disks: ["\(target),raw,xvda,w"], extra: idle)])
                #expect(bad.status == 1, "\(bad.output)")
                #expect(bad.output.contains("disk[0]"), "\(bad.output)")
            }
            #expect(host.f.daemon.report().domains == [.dom0])

            let shared = host.image("shared.img")
            let first = try await host.run(["create", host.config("first", disks: ["\(shared),raw,xvda,w"], extra: idle)])
            #expect(first.status == 0, "\(first.output)")
            let refused = try await host.run(["create", host.config("second", disks: ["\(shared),raw,xvda,w"], extra: idle)])
            #expect(refused.status == 1, "\(refused.output)")
            #expect(refused.output.contains("attached read-write") && refused.output.contains("w!"), "\(refused.output)")
            let reader = try await host.run(["create", host.config("reader", disks: ["\(shared),raw,xvda,r"], extra: idle)])
            #expect(reader.status == 0, "\(reader.output)")
            let bang = try await host.run(["create", host.config("bang", disks: ["vdev=xvda, access=w!, target=\(shared)"], extra: idle)])
            #expect(bang.status == 0, "\(bang.output)")
            for name in ["first", "reader", "bang"] {
                #expect(await host.consoleShows(name, "waiting for a shutdown request"), "\(name)")
            }

            // dom0 points a live domain's new vbd at something that is no disk: that device
            // alone fails, with the reason in its error key.
            let id = try #require(Host.domid(first.output))
            let device = XenbusDevice(type: "vbd", id: 51728, frontend: DomainID(id))
            try await XenbusToolstack.create(device, on: host.store, backendKeys: ["params": "/etc", "mode": "r"])
            #expect(await eventually(180) {
                ((try? await host.store.readIfPresent(device.backendPath + "/error")) ?? nil)?.contains("not a regular file or a block device") == true
            })
            // So does one whose cache mode no backend knows.
            let cached = XenbusDevice(type: "vbd", id: 51744, frontend: DomainID(id))
            try await XenbusToolstack.create(cached, on: host.store, backendKeys: ["params": shared, "mode": "r", "cache": "unsafe"])
            #expect(await eventually(180) {
                ((try? await host.store.readIfPresent(cached.backendPath + "/error")) ?? nil)?
                    .contains(#"cache is "unsafe", not one of none, writeback"#) == true
            })
            for name in ["first", "reader", "bang"] {
                let destroyed = try await host.run(["destroy", name])
                #expect(destroyed.status == 0, "\(destroyed.output)")
            }
            #expect(await host.nothingLeft(of: id))
        } cleanup: {
            await host.stop()
        }
    }
}
