import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenSimulatorClient
import XenStore

extension ProcessTests {
    /// Issue 18's two halves together across processes: two `xenpv hypervisor` daemons
    /// (two hosts), a `xenpv backend` on each serving the same image file (storage both
    /// hosts reach), and a `xenpv guest disk write-verify` writing with requests in
    /// flight while it is migrated, saved and restored; every acknowledged write is on
    /// the image, and the host it left holds nothing of it.
    @Suite(.serialized)
    struct MigrationWithDevicesTests {
        static let length = 24 << 20
        static let seed: UInt8 = 9

        /// `state` values as the store holds them (io/xenbus.h).
        enum XenbusStateValue {
            static let initialising = "1"
            static let initWait = "2"
        }

        /// Two daemons, a backend on each on one image (or on one `nbdkit file` export of
        /// it: storage both hosts reach over NBD), and a writing guest on host a.
        final class Hosts {
            let dir = temporaryDirectory()
            var a: String { dir + "/a.sock" }
            var b: String { dir + "/b.sock" }
            var image: String { dir + "/disk.img" }
            /// What the backends serve: the image, or the NBD export of it.
            let disk: String
            let daemonA: Child
            let daemonB: Child
            let backendA: Child
            let backendB: Child
            let nbdkit: Child?
            var guest: Child?

            init(throughNBDKit: Bool = false) async throws {
                #expect(FileManager.default.createFile(atPath: dir + "/disk.img", contents: nil))
                #expect(truncate(dir + "/disk.img", 32 << 20) == 0)
                if throughNBDKit {
                    nbdkit = try await Child.nbdkitFile(dir + "/disk.img", socket: dir + "/kit.sock")
                    disk = "nbd+unix:///?socket=\(dir)/kit.sock"
                } else {
                    nbdkit = nil
                    disk = dir + "/disk.img"
                }
                daemonA = try Child(["hypervisor", "--socket", dir + "/a.sock"], name: "host a")
                daemonB = try Child(["hypervisor", "--socket", dir + "/b.sock"], name: "host b")
                #expect(await daemonA.waitFor("listening"), "\(daemonA.output)")
                #expect(await daemonB.waitFor("listening"), "\(daemonB.output)")
                backendA = try Child(["backend", "--connect", dir + "/a.sock", "--disk", disk], name: "backend a")
                backendB = try Child(["backend", "--connect", dir + "/b.sock", "--disk", disk], name: "backend b")
                #expect(await backendA.waitFor("serving"), "\(backendA.output)")
                #expect(await backendB.waitFor("serving"), "\(backendB.output)")
            }

            /// Starts the writer on host a (128 KiB chunks, each several requests in
            /// flight at once, `intervalMs` apart, with `extra` options); its domain id
            /// once it has written 1 MiB.
            func startWriter(intervalMs: Int = 10, _ extra: [String] = []) async throws -> DomainID {
                let g = try Child(["guest", "disk", "write-verify", "--connect", a, "--length", "\(MigrationWithDevicesTests.length)",
                                   "--chunk", "131072", "--interval-ms", "\(intervalMs)", "--seed", "\(MigrationWithDevicesTests.seed)",
                                   "--timeout", "240"] + extra, name: "writer")
                guest = g
                #expect(await g.waitFor("written \(1 << 20)/", seconds: 60), "\(g.output)")
                let id = g.output.components(separatedBy: "joined as dom").last.flatMap { UInt16($0.prefix { $0.isNumber }) }
                return DomainID(try #require(id, "\(g.output)"))
            }

            /// Runs `xenpv ARGS` to its end; its status and output.
            func xenpv(_ args: [String]) async throws -> (Int32?, String) {
                let c = try Child(args, name: args[0])
                let status = await c.waitForExit(seconds: 120)
                return (status, c.output)
            }

            deinit {
                guest?.sendKill()
                backendA.sendKill()
                backendB.sendKill()
                daemonA.sendKill()
                daemonB.sendKill()
                nbdkit?.sendKill()
                try? FileManager.default.removeItem(atPath: dir)
            }
        }

        /// Bytes the writer reported acknowledged so far.
        static func written(_ output: String) -> Int {
            output.split(separator: "\n").last { $0.hasPrefix("written ") }
                .flatMap { Int($0.dropFirst("written ".count).prefix { $0.isNumber }) } ?? 0
        }

        /// The host at `socket` holds nothing of the guest: only dom0, no grant mapping and
        /// no port (its backend let the devices go), no store home; its processes are the
        /// backend and this check (and a saved guest's process, parked in its suspend call).
        /// The join and the report are round trips to that host's daemon (another process),
        /// blocking: on a thread of their own, never the cooperative pool.
        static func leftNothing(_ socket: String, _ id: DomainID, processes: Int = 2) async -> Bool {
            await eventually(30) {
                let report = await onThread { () -> DaemonReport? in
                    guard let hv = try? RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss) else { return nil }
                    defer { hv.close() }
                    return try? hv.report()
                }
                guard let r = report, r.domains == [.dom0], r.mappings == 0, r.ports == 0, r.processes == processes else { return false }
                guard let store = try? XenStoreClient(socketPath: socket + ".xenstore") else { return false }
                defer { store.close() }
                let home = try? await store.readIfPresent("/local/domain/\(id.rawValue)")
                let vbd = try? await store.readIfPresent("/local/domain/0/backend/vbd/\(id.rawValue)")
                let vif = try? await store.readIfPresent("/local/domain/0/backend/vif/\(id.rawValue)")
                return home == .some(nil) && vbd == .some(nil) && vif == .some(nil)
            }
        }

        /// The daemon's report, for a failure's message: on a thread of its own (round trips).
        private func report(_ socket: String) async -> String {
            await onThread {
                guard let hv = try? RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss) else { return "no daemon" }
                defer { hv.close() }
                return (try? hv.report().description) ?? "no report"
            }
        }

        /// Expects `leftNothing`; a failure says what `label`'s daemon still holds, and `context`.
        private func expectLeftNothing(_ socket: String, _ id: DomainID, processes: Int = 2, _ label: String,
                                       _ context: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation) async {
            let left = await Self.leftNothing(socket, id, processes: processes)
            let held = left ? "" : await report(socket)
            let said = left ? "" : context()
            #expect(left, "\(label): \(held); \(said)", sourceLocation: sourceLocation)
        }

        /// The image itself holds the pattern over the whole range.
        static func imageHoldsThePattern(_ path: String) throws -> Int? {
            let bytes = try #require(FileManager.default.contents(atPath: path))
            return (0..<length).first { i in
                let o = UInt64(i)
                return bytes[i] != UInt8(truncatingIfNeeded: (o &* 0x9E37_79B1) >> 11) ^ UInt8(truncatingIfNeeded: o >> 9) ^ seed
            }
        }

        /// On the image itself, and on an `nbdkit file` export of it that both hosts' backends
        /// reach (blkback's NBD engine: the source's connection goes with the vbd, the
        /// destination's opens when the guest arrives).
        @Test(.timeLimit(.minutes(5)), arguments: [false, true])
        func aWritingGuestMigratesThereAndBackWithEveryWriteOnTheSharedImage(_ throughNBDKit: Bool) async throws {
            if throughNBDKit && !FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit") { return }
            let hosts = try await Hosts(throughNBDKit: throughNBDKit)
            let id = try await hosts.startWriter()
            let guest = try #require(hosts.guest)

            let (status, output) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a])
            #expect(status == 0, "\(output)")
            #expect(await guest.waitFor("suspend: resumed"), "\(guest.output)")
            // The guest times its downtime: the pause to its vbd Connected there and a request answered.
            #expect(await guest.waitFor("first request answered"), "\(guest.output)")
            let there = Self.written(guest.output)
            #expect(there < Self.length, "migrated while it wrote: \(guest.output)")
            await expectLeftNothing(hosts.a, id, "host a", "backend a: \(hosts.backendA.output)")
            // It goes on writing through host b's backend.
            #expect(await eventually(60) { Self.written(guest.output) > there || guest.output.contains("wrote and flushed") },
                    "\(guest.output)")
            #expect(await hosts.backendB.waitFor("vbd/\(id.rawValue)/51712 serves \(hosts.disk)"), "\(hosts.backendB.output)")

            let (back, backOutput) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", hosts.a, "--connect", hosts.b])
            #expect(back == 0, "\(backOutput)")
            #expect(await eventually(30) { guest.output.components(separatedBy: "suspend: resumed").count == 3 }, "\(guest.output)")
            await expectLeftNothing(hosts.b, id, "host b", "backend b: \(hosts.backendB.output)")

            // No write failed or went missing: the guest reads every byte back, and the image holds them.
            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("verified \(Self.length) bytes"), "\(guest.output)")
            #expect(try Self.imageHoldsThePattern(hosts.image) == nil)
            for child in [hosts.daemonA, hosts.daemonB, hosts.backendA, hosts.backendB, guest] {
                #expect(child.sanitizerClean, "\(child.name): \(child.output)")
            }
        }

        /// Issue 18's whole guest: one domain writing its disk with requests in flight,
        /// echoing frames through its vif and dirtying its memory at 2,000 pages a second,
        /// migrated a → b and back: no error, every echo intact, its memory equal across
        /// each pause and at the end, every byte on the image, the hosts it left empty.
        @Test(.timeLimit(.minutes(5)))
        func aGuestWritingEchoingAndDirtyingItsMemoryMigratesThereAndBack() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startWriter(intervalMs: 20, ["--echo", "--dirty-rate", "2000"])
            let guest = try #require(hosts.guest)
            #expect(guest.output.contains("vif connected") && guest.output.contains("writing 2000 pages/s"), "\(guest.output)")

            for (from, to, left) in [(hosts.a, hosts.b, 1), (hosts.b, hosts.a, 2)] {
                let (status, output) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", to, "--connect", from])
                #expect(status == 0, "\(output)")
                #expect(await eventually(60) { guest.output.components(separatedBy: "suspend: resumed").count == left + 1 },
                        "\(guest.output)")
                // Its memory checked after the resume (after the downtime's line).
                #expect(await eventually(60) { guest.output.components(separatedBy: "equal=true").count == left + 1 }, "\(guest.output)")
                await expectLeftNothing(from, id, from, "guest: \(guest.output)")
                if left == 1 { #expect(Self.written(guest.output) < Self.length, "migrated while it wrote: \(guest.output)") }
            }
            #expect(await hosts.backendB.waitFor("vif\(id.rawValue).0"), "\(hosts.backendB.output)")
            #expect(await hosts.backendB.waitFor("vbd/\(id.rawValue)/51712 serves \(hosts.image)"), "\(hosts.backendB.output)")

            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("verified \(Self.length) bytes"), "\(guest.output)")
            #expect(try Self.imageHoldsThePattern(hosts.image) == nil)
            let echoed = guest.output.components(separatedBy: "\n").first { $0.contains("frames echoed intact") }
                .flatMap { Int($0.drop { !$0.isNumber }.prefix { $0.isNumber }) }
            #expect((echoed ?? 0) > 0, "\(guest.output)")
            #expect(guest.output.contains("equal across 2 suspends") && !guest.output.contains("equal=false"), "\(guest.output)")
            for child in [hosts.daemonA, hosts.daemonB, hosts.backendA, hosts.backendB, guest] {
                #expect(child.sanitizerClean, "\(child.name): \(child.output)")
            }
        }

        /// The destination gets the guest's devices ahead of its memory: while the guest is
        /// still paused on host a, host b's backend already waits in InitWait on its vbd
        /// (the frontend's half Initialising), and the guest then connects to it and writes on.
        @Test(.timeLimit(.minutes(5)))
        func theDestinationsBackendWaitsInInitWaitBeforeTheGuestArrives() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startWriter()
            let guest = try #require(hosts.guest)
            // Held paused until the test has looked at host b (it creates `go` then).
            let go = hosts.dir + "/go"
            let migrate = try Child(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a, "--hold-paused-until-file", go],
                                    name: "migrate")
            #expect(await guest.waitFor("suspend requested"), "\(guest.output)")
            #expect(await migrate.waitFor("paused until \(go) exists"), "\(migrate.output)")
            func onB(_ path: String) async throws -> String {
                let (_, out) = try await hosts.xenpv(["xenstore", "read", "--store", hosts.b + ".xenstore", path])
                return out.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let backendState = "/local/domain/0/backend/vbd/\(id.rawValue)/51712/state"
            let waiting = await eventually { (try? await onB(backendState)) == XenbusStateValue.initWait }
            #expect(waiting, "host b's backend: \(hosts.backendB.output)")
            #expect(!guest.output.contains("suspend: resumed"), "still paused while host b was looked at")
            #expect(try await onB("/local/domain/\(id.rawValue)/device/vbd/51712/state") == XenbusStateValue.initialising)
            #expect(FileManager.default.createFile(atPath: go, contents: nil))
            #expect(await migrate.waitForExit(seconds: 120) == 0, "\(migrate.output)")
            #expect(await guest.waitFor("first request answered"), "\(guest.output)")
            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("verified \(Self.length) bytes"), "\(guest.output)")
            #expect(try Self.imageHoldsThePattern(hosts.image) == nil)
        }

        /// A migration that fails halfway (the destination killed while the guest is paused):
        /// the guest goes on writing on the source, through the same rings and backend.
        @Test(.timeLimit(.minutes(5)))
        func aDestinationKilledWhileAWritingGuestIsPausedLeavesItWritingOnTheSource() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startWriter()
            let guest = try #require(hosts.guest)
            // Held paused until the test has killed host b (it creates `go` then).
            let go = hosts.dir + "/go"
            let migrate = try Child(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a, "--hold-paused-until-file", go],
                                    name: "migrate")
            #expect(await guest.waitFor("suspend requested"), "\(guest.output)")
            #expect(await migrate.waitFor("paused until \(go) exists"), "\(migrate.output)")
            await hosts.daemonB.kill()
            #expect(FileManager.default.createFile(atPath: go, contents: nil))
            #expect(await migrate.waitForExit(seconds: 60) != 0, "\(migrate.output)")
            #expect(migrate.output.contains("goes on on the source"), "\(migrate.output)")
            #expect(await guest.waitFor("suspend: cancelled"), "\(guest.output)")
            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("verified \(Self.length) bytes"), "\(guest.output)")
            #expect(try Self.imageHoldsThePattern(hosts.image) == nil)
        }

        /// The NIC: a stop-and-wait echo through host a's backend goes on through host b's.
        @Test(.timeLimit(.minutes(5)))
        func anEchoingGuestMigratesAndEveryFrameComesBackIntact() async throws {
            let hosts = try await Hosts()
            let guest = try Child(["guest", "net-echo", "--connect", hosts.a, "--count", "600", "--interval-ms", "10",
                                   "--timeout", "200"], name: "echo")
            hosts.guest = guest
            #expect(await guest.waitFor("echoed 50/", seconds: 60), "\(guest.output)")
            let id = DomainID(try #require(guest.output.components(separatedBy: "joined as dom").last.flatMap { UInt16($0.prefix { $0.isNumber }) }))
            let (status, output) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a])
            #expect(status == 0, "\(output)")
            #expect(await guest.waitFor("suspend: resumed"), "\(guest.output)")
            #expect(!guest.output.contains("echoed 600/"), "migrated while it echoed: \(guest.output)")
            await expectLeftNothing(hosts.a, id, "host a", "backend a: \(hosts.backendA.output)")
            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("600 frames echoed intact"), "\(guest.output)")
            #expect(await hosts.backendB.waitFor("vif\(id.rawValue).0"), "\(hosts.backendB.output)")
        }

        @Test(.timeLimit(.minutes(5)))
        func aWritingGuestSavedOnOneHostAndRestoredOnTheOtherLosesNoWrite() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startWriter()
            let guest = try #require(hosts.guest)
            let file = hosts.dir + "/guest.save"

            let (saved, saveOutput) = try await hosts.xenpv(["save", "\(id.rawValue)", file, "--connect", hosts.a])
            #expect(saved == 0, "\(saveOutput)")
            await expectLeftNothing(hosts.a, id, processes: 3, "host a", "backend a: \(hosts.backendA.output)")
            // Parked in its suspend call meanwhile: no write is acknowledged.
            let parked = Self.written(guest.output)
            try await Task.sleep(nanoseconds: 500_000_000)
            #expect(Self.written(guest.output) == parked && !guest.output.contains("suspend: "), "\(guest.output)")

            let (restored, restoreOutput) = try await hosts.xenpv(["restore", file, "--to", hosts.b, "--connect", hosts.a])
            #expect(restored == 0, "\(restoreOutput)")
            #expect(await guest.waitFor("suspend: resumed"), "\(guest.output)")
            #expect(await guest.waitForExit(seconds: 180) == 0, "\(guest.output)")
            #expect(guest.output.contains("verified \(Self.length) bytes"), "\(guest.output)")
            #expect(try Self.imageHoldsThePattern(hosts.image) == nil)
            #expect(await hosts.backendB.waitFor("vbd/\(id.rawValue)/51712 serves \(hosts.image)"), "\(hosts.backendB.output)")
        }
    }
}
