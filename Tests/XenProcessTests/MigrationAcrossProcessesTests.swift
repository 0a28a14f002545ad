import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
import XenLocks
import XenSimulatorClient
import XenStore
import XenToolstack

extension ProcessTests {
    /// Save, restore and live migration between two `xenpv hypervisor` daemons (two
    /// hosts), with a `xenpv guest memory` process that writes its memory all the while
    /// and checks, after its `suspend` call returns, that its memory is what it wrote at
    /// the pause, at the same addresses.
    @Suite(.serialized)
    struct MigrationAcrossProcessesTests {
        /// Two daemons and a guest joined to the first.
        final class Hosts {
            let dir = temporaryDirectory()
            var a: String { dir + "/a.sock" }
            var b: String { dir + "/b.sock" }
            let daemonA: Child
            var daemonB: Child
            var guest: Child?

            init() async throws {
                daemonA = try Child(["hypervisor", "--socket", dir + "/a.sock"], name: "host a")
                daemonB = try Child(["hypervisor", "--socket", dir + "/b.sock"], name: "host b")
                #expect(await daemonA.waitFor("listening"), "\(daemonA.output)")
                #expect(await daemonB.waitFor("listening"), "\(daemonB.output)")
            }

            /// Starts the guest on host a; its domain id.
            func startGuest(rate: Int = 2000) async throws -> DomainID {
                let g = try Child(["guest", "memory", "--connect", a, "--frames", "4096", "--pages", "512", "--rate", "\(rate)"], name: "guest")
                guest = g
                #expect(await g.waitFor("joined as dom"), "\(g.output)")
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
                daemonA.sendKill()
                daemonB.sendKill()
                try? FileManager.default.removeItem(atPath: dir)
            }
        }

        /// The value after `key=` in the guest's line starting with `line`.
        static func field(_ output: String, _ line: String, _ key: String) -> String? {
            guard let l = output.split(separator: "\n").last(where: { $0.contains(line) }) else { return nil }
            return l.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }

        /// The domains on the daemon at `socket`. A join and a report are round trips to that
        /// daemon (another process), blocking: on a thread of their own, never the pool.
        private func domains(_ socket: String) async throws -> [DomainID] {
            try await onThread {
                let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                defer { dom0.close() }
                return try dom0.report().domains
            }
        }

        /// Joins the daemon at `socket` as `request`, on a thread of its own (a blocking
        /// round trip to another process).
        private func join(_ socket: String, as request: DomainRequest,
                          onDaemonLost: @escaping RemoteHypervisor.LostHandler = ignoreLoss) async throws -> RemoteHypervisor {
            try await onThread { try RemoteHypervisor(socketPath: socket, as: request, onDaemonLost: onDaemonLost) }
        }

        private func storeHas(_ socket: String, _ path: String) async throws -> Bool {
            let store = try XenStoreClient(socketPath: socket + ".xenstore")
            defer { store.close() }
            return try await store.readIfPresent(path) != nil
        }

        @Test func saveThenRestoreOnTheOtherHostResumesTheWaitingGuestWithItsMemory() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            let guest = try #require(hosts.guest)
            let file = hosts.dir + "/guest.save"

            let (saved, saveOutput) = try await hosts.xenpv(["save", "\(id.rawValue)", file, "--connect", hosts.a])
            #expect(saved == 0, "\(saveOutput)")
            #expect(await guest.waitFor("suspend checksum="), "\(guest.output)")
            // Released on the source: the domain, and its home in the store.
            #expect(await eventually(10) { (try? await domains(hosts.a).contains(id)) == false })
            #expect(try await !storeHas(hosts.a, "/local/domain/\(id.rawValue)/domid"))
            // The guest's process waits in its suspend call meanwhile.
            #expect(!guest.output.contains("resumed") && guest.process.isRunning)

            // A truncated copy and a corrupted copy are refused, and leave nothing behind.
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
            try Data(bytes.prefix(bytes.count / 2)).write(to: URL(fileURLWithPath: hosts.dir + "/truncated.save"))
            var flipped = bytes
            flipped[bytes.count / 3] ^= 0x40
            try Data(flipped).write(to: URL(fileURLWithPath: hosts.dir + "/corrupted.save"))
            for bad in ["truncated", "corrupted"] {
                let (status, output) = try await hosts.xenpv(["restore", hosts.dir + "/\(bad).save", "--to", hosts.b, "--connect", hosts.a])
                #expect(status != 0 && output.contains("not a whole, valid domain"), "\(bad): \(output)")
                #expect(await eventually(10) { (try? await domains(hosts.b).contains(id)) == false }, "\(bad)")
                #expect(await eventually(10) { (try? await storeHas(hosts.b, "/local/domain/\(id.rawValue)")) == false }, "\(bad)")
            }
            #expect(!guest.output.contains("resumed"))

            let (restored, restoreOutput) = try await hosts.xenpv(["restore", file, "--to", hosts.b, "--connect", hosts.a])
            #expect(restored == 0, "\(restoreOutput)")
            #expect(await guest.waitFor("resumed checksum="), "\(guest.output)")
            let out = guest.output
            #expect(Self.field(out, "resumed", "equal") == "true", "\(out)")
            #expect(Self.field(out, "resumed", "checksum") == Self.field(out, "suspend", "checksum"))
            #expect(Self.field(out, "resumed", "base") == Self.field(out, "suspend", "base"))
            #expect(try await domains(hosts.b).contains(id))
            #expect(try await storeHas(hosts.b, "/local/domain/\(id.rawValue)/domid"))

            // The guest's store connection moved with it: a shutdown on the destination reaches it.
            let (shut, shutOutput) = try await hosts.xenpv(["shutdown", "\(id.rawValue)", "--connect", hosts.b, "--timeout", "30"])
            #expect(shut == 0, "\(shutOutput)")
            #expect(await guest.waitForExit(seconds: 60) == 0, "\(guest.output)")
            #expect(await eventually(10) { (try? await domains(hosts.b).contains(id)) == false })
        }

        @Test func liveMigrationMovesAWritingGuestAndTheSourceKeepsNothing() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest(rate: 4000)
            let guest = try #require(hosts.guest)
            try await Task.sleep(nanoseconds: 300_000_000)

            let (status, output) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a])
            #expect(status == 0, "\(output)")
            #expect(output.contains("rounds:") && output.contains("downtime:"), "\(output)")
            #expect(await guest.waitFor("resumed checksum="), "\(guest.output)")
            let out = guest.output
            #expect(Self.field(out, "resumed", "equal") == "true", "\(out)")
            #expect(Self.field(out, "resumed", "checksum") == Self.field(out, "suspend", "checksum"))
            #expect(Self.field(out, "resumed", "base") == Self.field(out, "suspend", "base"))
            #expect(try await !domains(hosts.a).contains(id))
            // Nothing of it held on the source: no mapping, no port, no process but the checker's.
            let source = try await join(hosts.a, as: .dom0)
            let left = try await onThread { try source.report() }
            source.close()
            #expect(left.mappings == 0 && left.ports == 0 && left.processes == 1 && left.domains == [.dom0], "\(left)")
            #expect(try await domains(hosts.b).contains(id))
            #expect(try await storeHas(hosts.b, "/local/domain/\(id.rawValue)/domid"))
            #expect(await eventually(10) { (try? await storeHas(hosts.a, "/local/domain/\(id.rawValue)")) == false })

            // And back again: the moved guest is logged, paused and moved like any other.
            let (back, backOutput) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--to", hosts.a, "--connect", hosts.b])
            #expect(back == 0, "\(backOutput)")
            #expect(await eventually(30) { guest.output.components(separatedBy: "resumed checksum=").count == 3 }, "\(guest.output)")
            #expect(Self.field(guest.output, "resumed", "equal") == "true")
            #expect(try await domains(hosts.a).contains(id))
            #expect(try await !domains(hosts.b).contains(id))
        }

        @Test func aDestinationKilledWhileTheGuestIsPausedLeavesItRunningOnTheSource() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            let guest = try #require(hosts.guest)
            // Held paused until the test has killed host b (it creates `go` then).
            let go = hosts.dir + "/go"
            let migrate = try Child(["migrate", "\(id.rawValue)", "--to", hosts.b, "--connect", hosts.a, "--hold-paused-until-file", go],
                                    name: "migrate")
            #expect(await guest.waitFor("suspend checksum="), "\(guest.output)")
            #expect(await migrate.waitFor("paused until \(go) exists"), "\(migrate.output)")
            await hosts.daemonB.kill()
            #expect(FileManager.default.createFile(atPath: go, contents: nil))
            #expect(await migrate.waitForExit(seconds: 60) != 0, "\(migrate.output)")
            #expect(migrate.output.contains("goes on on the source"), "\(migrate.output)")
            #expect(await guest.waitFor("cancelled checksum="), "\(guest.output)")
            #expect(Self.field(guest.output, "cancelled", "equal") == "true")
            #expect(try await domains(hosts.a).contains(id))
            // It goes on writing there.
            let before = Int(Self.field(guest.output, "suspend", "written") ?? "") ?? 0
            let (saved, saveOutput) = try await hosts.xenpv(["save", "\(id.rawValue)", hosts.dir + "/later.save", "--connect", hosts.a])
            #expect(saved == 0, "\(saveOutput)")
            #expect(await eventually(20) { (Int(Self.field(guest.output, "suspend", "written") ?? "") ?? 0) > before }, "\(guest.output)")
        }

        @Test func aMigrationStreamsToAReceiverOverTCPAndAKilledReceiverCancelsIt() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            let guest = try #require(hosts.guest)
            let port = Int.random(in: 30_000..<60_000)
            let receiver = try Child(["migrate-receive", "--listen", "tcp:127.0.0.1:\(port)", "--connect", hosts.b], name: "receiver")
            #expect(await receiver.waitFor("listening"), "\(receiver.output)")
            let (status, output) = try await hosts.xenpv(["migrate", "\(id.rawValue)", "--via", "tcp:127.0.0.1:\(port)", "--connect", hosts.a])
            #expect(status == 0, "\(output)")
            #expect(await receiver.waitForExit(seconds: 30) == 0, "\(receiver.output)")
            #expect(await guest.waitFor("resumed checksum="), "\(guest.output)")
            #expect(Self.field(guest.output, "resumed", "equal") == "true")
            #expect(try await domains(hosts.b).contains(id))
            #expect(try await !domains(hosts.a).contains(id))

            // Back through a Unix socket, the receiver killed while the guest is paused.
            let path = hosts.dir + "/receive.sock"
            let dying = try Child(["migrate-receive", "--listen", "unix:" + path, "--connect", hosts.a], name: "receiver")
            #expect(await dying.waitFor("listening"), "\(dying.output)")
            let go = hosts.dir + "/go"
            let migrate = try Child(["migrate", "\(id.rawValue)", "--via", "unix:" + path, "--connect", hosts.b, "--hold-paused-until-file", go],
                                    name: "migrate")
            #expect(await eventually(30) { guest.output.components(separatedBy: "suspend checksum=").count == 3 }, "\(guest.output)")
            #expect(await migrate.waitFor("paused until \(go) exists"), "\(migrate.output)")
            await dying.kill()
            #expect(FileManager.default.createFile(atPath: go, contents: nil))
            #expect(await migrate.waitForExit(seconds: 60) != 0, "\(migrate.output)")
            #expect(await guest.waitFor("cancelled checksum="), "\(guest.output)")
            #expect(Self.field(guest.output, "cancelled", "equal") == "true")
            #expect(try await domains(hosts.b).contains(id))
            #expect(try await !domains(hosts.a).contains(id))
        }

        @Test func aSuspendNobodyTakesTimesOutAndACancelledOneChangesNothing() async throws {
            let hosts = try await Hosts()
            // Every call below is a round trip to host a's daemon (another process), and the
            // guest's calls wait while its `suspend` holds its link: each on a thread of its
            // own, never the cooperative pool.
            let guest = try await join(hosts.a, as: .newGuest(frames: 64))
            defer { guest.close() }
            let dom0 = try await join(hosts.a, as: .dom0)
            defer { dom0.close() }
            // A guest's `suspend` blocks: on a thread of its own, never the cooperative pool.
            let timedOut = await onThread {
                Result { () throws(HypervisorError) -> SuspendOutcome in try guest.suspend(timeout: .milliseconds(300)) }
            }
            #expect(throws: HypervisorError.self) { try timedOut.get() }
            if case .failure(let e) = timedOut { #expect(e.code == .errno(.timedOut), "\(e)") }

            let events = try await onThread { try guest.openEventChannels() }
            let port = try await onThread { try events.bindUnbound(remote: .dom0) }
            async let outcome = onThread { try guest.suspend(timeout: .seconds(120)) }
            #expect(await eventually(30) { await onThread { (try? dom0.isSuspended(guest.domainID)) == true } })
            try await onThread {
                try dom0.claimSuspend(guest.domainID)
                try dom0.cancelSuspend(guest.domainID)
            }
            #expect(try await outcome == .cancelled)
            // Everything as before: the same port, and new work.
            try await onThread {
                try events.unbind(port)
                _ = try events.bindUnbound(remote: .dom0)
            }
        }

        @Test func aResumedProcessDropsItsOldPortsAndSharesHarmlesslyAndWorksOnTheDestination() async throws {
            let hosts = try await Hosts()
            // Joins, binds, shares, maps and reports are round trips to a daemon (another
            // process), blocking: each on a thread of its own, never the cooperative pool.
            let guest = try await join(hosts.a, as: .newGuest(frames: 256), onDaemonLost: { m in Issue.record("lost: \(m)") })
            defer { guest.close() }
            let id = guest.domainID
            let own = try guest.pageAllocator.allocatePages(8)
            for i in 0..<8 { own.memory.page(i).storeBytes(of: UInt64(0xA000 + i), as: UInt64.self) }
            let (events, oldPort, sharer) = try await onThread { () throws -> (any EventChannels, EventPort, any GrantSharer) in
                let events = try guest.openEventChannels()
                let oldPort = try events.bindUnbound(remote: .dom0)
                return (events, oldPort, try guest.openGrantSharer())
            }
            let oldShare = try await onThread { try sharer.sharePages(count: 2, with: .dom0, writable: true) }
            oldShare.memory.page(1).storeBytes(of: 0xB1, as: UInt64.self)
            let (forgotten, again) = try await onThread {
                (try sharer.sharePages(count: 2, with: .dom0, writable: true), try sharer.sharePages(count: 3, with: .dom0, writable: false))
            }
            for i in 0..<3 { again.memory.page(i).storeBytes(of: UInt64(0xC000 + i), as: UInt64.self) }
            try await onThread {
                // Only a share whose references a resume took away is granted again.
                #expect(throws: HypervisorError.self) { _ = try sharer.shareAgain(again) }
                // Forgetting a share still granted (no resume yet) keeps its pages.
                let granted = try sharer.sharePages(count: 1, with: .dom0, writable: true)
                sharer.forget(granted)
                #expect(try sharer.sharePages(count: 1, with: .dom0, writable: true).memory.base != granted.memory.base)
            }

            // No device to reconnect: the old host may let the domain go at once.
            async let outcome = onThread { () throws -> SuspendOutcome in
                let o = try guest.suspend(timeout: .seconds(120))
                if o == .resumed { guest.resumeSettled() }
                return o
            }
            let (a, b) = (hosts.a, hosts.b)
            let (source, destination) = try await onThread { (try Toolstack(socketPath: a), try Toolstack(socketPath: b)) }
            defer { source.close() }
            defer { destination.close() }
            let figures = try await source.migrate(id, to: destination, destinationSocket: hosts.b)
            #expect(try await outcome == .resumed)
            #expect(figures.pagesPerRound.count >= 2, "\(figures)")
            let dom0B = try await join(hosts.b, as: .dom0)
            defer { dom0B.close() }

            // Same memory at the same addresses, shared pages included.
            for i in 0..<8 { #expect(own.memory.page(i).load(as: UInt64.self) == UInt64(0xA000 + i)) }
            #expect(oldShare.memory.page(1).load(as: UInt64.self) == 0xB1)
            let newPort = try await onThread { () throws -> EventPort in
                // What was bound or shared before is gone: releasing it is a no-op, not an error.
                try events.unbind(oldPort)
                // A share forgotten after the move gives its pool pages back for reuse (first fit).
                sharer.forget(forgotten)
                #expect(try sharer.sharePages(count: 2, with: .dom0, writable: true).memory.base == forgotten.memory.base)
                try sharer.unshare(oldShare)
                // Granted again: the same pages and what they hold, under references the
                // destination's dom0 maps (read-only, as before).
                let regranted = try sharer.shareAgain(again)
                #expect(regranted.memory == again.memory && regranted.refs.count == 3 && !regranted.writable)
                let mapper = try dom0B.openGrantMapper()
                let seen = try mapper.map(regranted.refs, from: id, writable: false)
                for i in 0..<3 { #expect(seen.memory.page(i).load(as: UInt64.self) == UInt64(0xC000 + i)) }
                #expect(throws: HypervisorError.self) { _ = try mapper.map([regranted.refs[0]], from: id, writable: true) }
                try mapper.unmap(seen)
                mapper.close()
                #expect(throws: HypervisorError.self) { _ = try sharer.shareAgain(regranted) }
                try sharer.unshare(regranted)
                // New work goes to the destination's daemon and store.
                return try events.bindUnbound(remote: .dom0)
            }
            let newShare = try await onThread { try sharer.sharePages(count: 1, with: .dom0, writable: false) }
            #expect(try await guest.store.read("/local/domain/\(id.rawValue)/domid") == "\(id.rawValue)")
            try await onThread {
                #expect(try dom0B.report().ports == 1)
                try events.unbind(newPort)
                try sharer.unshare(newShare)
            }
            #expect(try await !domains(hosts.a).contains(id))
        }

        /// A save is a run of blocking calls (its file's open and writes, daemon round trips),
        /// on a thread of its own, never the cooperative pool's. As many saves as the pool has
        /// threads each write to a FIFO nobody reads yet, so each blocks in its open; this test
        /// must run meanwhile to start their readers, and each guest then resumes on host b
        /// from what was read. (A watchdog reads them after 60 s if the test cannot: bounded.)
        @Test func savesThatBlockHoldNoThreadOfThePool() async throws {
            let hosts = try await Hosts()
            let count = BlockingGate.poolThreads
            var guests: [RemoteHypervisor] = []
            for _ in 0..<count { guests.append(try await join(hosts.a, as: .newGuest(frames: 64))) }
            defer { for g in guests { g.close() } }
            let (a, b) = (hosts.a, hosts.b)
            let (source, destination) = try await onThread { (try Toolstack(socketPath: a), try Toolstack(socketPath: b)) }
            defer { source.close() }
            defer { destination.close() }
            let fifos = (0..<count).map { hosts.dir + "/guest\($0).fifo" }
            for f in fifos { #expect(mkfifo(f, 0o600) == 0) }

            let readersStarted = DispatchSemaphore(value: 0)
            let watchdogFired = Locked(false)
            Thread {
                guard readersStarted.wait(timeout: .now() + 60) == .timedOut else { return }
                watchdogFired.withLock { $0 = true }
                for f in fifos { _ = Self.drain(f) }
            }.start()

            let outcomes = guests.map { g in Task { try await onThread { try g.suspend(timeout: .seconds(120)) } } }
            let saves = zip(guests, fifos).map { g, f in Task { try await source.save(g.domainID, to: f) } }
            // Each save waits in its FIFO's open (the kernel's `wait_for_partner`).
            #expect(await eventually(30) { Self.threadsOpeningAFIFO() >= count })
            readersStarted.signal()
            let streams = await withTaskGroup(of: (Int, [UInt8]).self) { group in
                for (i, f) in fifos.enumerated() { group.addTask { (i, await onThread { Self.drain(f) }) } }
                var streams = [[UInt8]](repeating: [], count: count)
                for await (i, bytes) in group { streams[i] = bytes }
                return streams
            }
            #expect(!watchdogFired.withLock { $0 }, "the saves held the pool's threads until the watchdog read their FIFOs")
            for (i, save) in saves.enumerated() {
                #expect(try await save.value == streams[i].count)
                let file = hosts.dir + "/guest\(i).save"
                try Data(streams[i]).write(to: URL(fileURLWithPath: file))
                _ = try await source.restore(from: file, to: destination, destinationSocket: hosts.b)
                #expect(try await outcomes[i].value == .resumed)
            }
        }

        /// This process's threads waiting in the open of a FIFO that has no reader.
        private static func threadsOpeningAFIFO() -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.filter { (try? String(contentsOfFile: "/proc/self/task/\($0)/wchan", encoding: .utf8)) == "wait_for_partner" }.count
        }

        /// Everything written to FIFO `path` until its writer closes it (nothing if none comes).
        private static func drain(_ path: String) -> [UInt8] {
            // Opened without waiting for a writer, then read blocking: a writer waiting in its
            // open is let go, and one that already went leaves the end of the stream.
            let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else { return [] }
            defer { close(fd) }
            _ = fcntl(fd, F_SETFL, 0)
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n < 0, errno == EINTR { continue }
                guard n > 0 else { return bytes }
                bytes += chunk[0..<n]
            }
        }

        @Test func aStreamReadsOnlyTheFramesThatHoldDataAndLeavesTheRestUnallocated() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            // The join, the export and the stream's calls are round trips to host a's daemon
            // (another process), blocking: on a thread of their own, never the pool.
            let dom0 = try await join(hosts.a, as: .dom0)
            defer { dom0.close() }
            let view = try await onThread { try dom0.exportDomain(id) }
            // The guest writes 512 of its 4,096 frames: the rest were never written.
            let before = view.framesHoldingData().filter { $0 < UInt64(view.mainFrames) }
            #expect(before.count >= 512 && before.count < view.mainFrames / 2, "\(before.count)")
            // The stream leaves pages of zeros out, and the guest fills its pages one after
            // another once joined (on a loaded machine, maybe not all yet): wait until it has.
            func filled() -> Int {
                var page = [UInt8](repeating: 0, count: XenPage.size)
                return before.count { frame in
                    (try? page.withUnsafeMutableBytes { try view.read([frame], into: $0) }) != nil && page.contains { $0 != 0 }
                }
            }
            #expect(await eventually { filled() >= 512 }, "\(filled()) of \(before.count) frames hold data")
            let sent = try await onThread { () throws -> Int in
                let sink = open("/dev/null", O_WRONLY | O_CLOEXEC)
                defer { close(sink) }
                let writer = try DomainStreamWriter(hypervisor: dom0, domain: id, output: sink)
                try writer.begin(name: "probe")
                return try writer.sendAll()
            }
            #expect(sent >= 512 && sent <= before.count + 64, "\(sent) sent of \(before.count)")
            // Reading a never-written frame through the mapping would have given it a page.
            let after = view.framesHoldingData().filter { $0 < UInt64(view.mainFrames) }
            #expect(after.count < view.mainFrames / 2, "\(after.count) of \(view.mainFrames) frames hold pages after a first round")
        }

        /// The toolstack reads a saved domain's memory and writes a restored one's through
        /// their memfds: its process never maps (so never has to tear down) the domain's
        /// memory, and a frame the domain does not have is refused.
        @Test func theToolstackCopiesADomainsMemoryWithoutMappingIt() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            // Joins, the export and the import are round trips to a daemon (another process),
            // blocking: on a thread of their own, never the pool. The copies go through memfds.
            let dom0 = try await join(hosts.a, as: .dom0)
            defer { dom0.close() }
            /// This process's mappings of exactly the domain's 4,096 frames.
            func mappingsOfTheDomainsSize() throws -> Int {
                let maps = try String(contentsOfFile: "/proc/self/maps", encoding: .utf8)
                return maps.split(separator: "\n").filter { line in
                    let range = line.prefix { $0 != " " }.split(separator: "-").compactMap { UInt(String($0), radix: 16) }
                    return range.count == 2 && range[1] - range[0] == 4096 * 4096
                }.count
            }
            let mappedBefore = try mappingsOfTheDomainsSize()
            let saved = try await onThread { try dom0.exportDomain(id) }
            #expect(try mappingsOfTheDomainsSize() == mappedBefore)
            // Runs and single frames alike; the guest writes its first 512 frames.
            let frames: [UInt64] = [0, 1, 2, 7, 100, 101]
            var page = [UInt8](repeating: 0, count: frames.count * 4096)
            try page.withUnsafeMutableBytes { try saved.read(frames, into: $0) }
            #expect(page.contains { $0 != 0 }, "the guest's written frames read back as zeros")
            let outside = UInt64(saved.mainFrames + (saved.pools.map(\.count).reduce(0, +))) + (1 << 20)
            #expect(!saved.holds(outside))
            let refused = page.withUnsafeMutableBytes { out in Result { try saved.read([0, outside], into: out) } }
            if case .failure(let e as HypervisorError) = refused { #expect(e.code == .errno(.invalidArgument), "\(e)") } else {
                Issue.record("a frame the domain does not have was read: \(refused)")
            }

            let dom0B = try await join(hosts.b, as: .dom0)
            defer { dom0B.close() }
            let restored = try await onThread { try dom0B.importDomain(id, frames: 64) }
            try await withCleanup {
                let written: [UInt64] = [0, 1, 2, 40, 63]
                let pattern = (0..<written.count * 4096).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 / 4096) }
                try pattern.withUnsafeBytes { try restored.write(written, from: $0) }
                var back = [UInt8](repeating: 0, count: pattern.count)
                try back.withUnsafeMutableBytes { try restored.read(written, into: $0) }
                #expect(back == pattern)
                #expect(throws: HypervisorError.self) { try pattern.withUnsafeBytes { try restored.write([64], from: $0) } }
                #expect(throws: HypervisorError.self) { try pattern.withUnsafeBytes { try restored.write(written, from: UnsafeRawBufferPointer(rebasing: $0[..<4096])) } }
            } cleanup: {
                _ = await onThread { try? dom0B.abortImport(id) }
            }
        }

        @Test func onlyDom0MayTakeOrMakeADomainsState() async throws {
            let hosts = try await Hosts()
            let id = try await hosts.startGuest()
            // Every call is a round trip to host a's daemon (another process), blocking: on a
            // thread of its own, never the pool.
            let other = try await join(hosts.a, as: .newGuest(frames: 64))
            defer { other.close() }
            let b = hosts.b
            try await onThread {
                let refusals: [(String, () throws -> Void)] = [
                    ("export", { _ = try other.exportDomain(id) }),
                    ("claim", { try other.claimSuspend(id) }),
                    ("resume elsewhere", { try other.resumeElsewhere(id, socketPath: b, token: DomainToken(high: 1, low: 2)) }),
                    ("cancel", { try other.cancelSuspend(id) }),
                    ("park", { try other.parkSuspended(id) }),
                    ("import", { _ = try other.importDomain(DomainID(40), frames: 64) }),
                ]
                for (what, call) in refusals {
                    #expect(throws: HypervisorError.self, "\(what)") { try call() }
                    do { try call() } catch let e as HypervisorError { #expect(e.code == .errno(.notPermitted), "\(what): \(e)") }
                }
            }
            // dom0 restoring onto a taken id is refused clearly.
            let dom0 = try await join(hosts.a, as: .dom0)
            defer { dom0.close() }
            await onThread {
                do throws(HypervisorError) {
                    _ = try dom0.importDomain(id, frames: 4096)
                    Issue.record("importing over a live domain succeeded")
                } catch {
                    #expect(error.code == .errno(.fileExists), "\(error)")
                }
            }
        }
    }
}
