import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
import XenSockets
import XenStore
@testable import XenSimulatorDaemon
@testable import XenSimulatorClient

extension ProcessTests {
    /// The hypervisor daemon tried as a hostile guest and a hostile local user
    /// would (issue 13): each attack is refused or bounded, and nobody else is harmed.
    @Suite struct DaemonIsolationTests {
        typealias Fixture = DaemonFixture

        /// The code `body` fails with, or nil if it does not fail.
        func failure(_ body: () throws -> Void) -> HypervisorError.Code? {
            do {
                try body()
                return nil
            } catch let e as HypervisorError {
                return e.code
            } catch {
                return nil
            }
        }

        func call(_ fd: Int32, _ m: WireMessage) -> WireMessage? {
            guard Wire.send(fd, m) else { return nil }
            return Wire.receive(fd)
        }

        /// "Anyone can be dom0": a process the daemon does not trust (here every
        /// process, as the policy trusts no uid) is refused dom0, a backend's
        /// place and new guests; the kernel's credentials decide, not the request.
        @Test func anUntrustedPeerIsNeitherDom0NorAToolstack() async throws {
            let f = try Fixture { $0.trusted.uids = [] }
            try await withCleanup {
                let (socket, daemon) = (f.socket, f.daemon)
                // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
                try await onThread {
                    for request in [DomainRequest.dom0, .backend, .newGuest(frames: 64)] {
                        #expect(throws: HypervisorError.self) {
                            _ = try RemoteHypervisor(socketPath: socket, as: request, onDaemonLost: ignoreLoss)
                        }
                    }
                    let fd = try rawConnection(socket)
                    defer { close(fd) }
                    #expect(call(fd, WireMessage([DaemonOp.join.rawValue, 0, 0]))?.error?.code == .errno(.notPermitted))
                    #expect(daemon.report().domains == [.dom0])
                }
            } cleanup: {
                await f.stop()
            }
        }

        /// The same through the real commands: the socket opened to everyone (as
        /// an administrator might chmod it), a `nobody` process is refused as a new
        /// guest, and joins only the domain dom0 created for its token.
        @Test(.timeLimit(.minutes(5))) func aUserTheDaemonDoesNotTrustRunsAGuestOnlyWithItsToken() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            #expect(FileManager.default.createFile(atPath: image, contents: Data(count: 4 << 20)))
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var st = stat()
            #expect(lstat(sock, &st) == 0 && st.st_mode & 0o777 == 0o600, "the socket is the owner's alone")
            #expect(chmod(sock, 0o666) == 0)
            let backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")

            // A copy nobody can run wherever the build folder lies (a home directory may be 0700).
            let binary = dir + "/xenpv"
            try FileManager.default.copyItem(atPath: xenpvPath(), toPath: binary)
            #expect(chmod(binary, 0o755) == 0 && chmod(dir, 0o755) == 0)
            let asNobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups", binary]
            let refused = try Child(asNobody + ["guest", "disk", "write", "--connect", sock, "--length", "65536"],
                                    name: "nobody", executable: "/usr/bin/setpriv")
            #expect(await refused.waitForExit(seconds: 20).map { $0 != 0 } == true, "\(refused.output)")
            #expect(refused.output.contains("not trusted"), "\(refused.output)")

            let create = try Child(["domain", "create", "--connect", sock, "--vbd", "--frames", "1024"], name: "domain create")
            #expect(await create.waitForExit(seconds: 20) == 0, "\(create.output)")
            let words = create.output.split(whereSeparator: \.isWhitespace)
            let token = try #require(words.last.map(String.init))
            let guest = try Child(asNobody + ["guest", "disk", "write", "--connect", sock, "--token", token, "--length", "65536"],
                                  name: "nobody with a token", executable: "/usr/bin/setpriv")
            #expect(await guest.waitForExit(seconds: 30) == 0, "\(guest.output)\n--- backend:\n\(backend.output)")
            #expect(guest.output.contains("joined as dom\(words.first ?? "?")"), "\(guest.output)")
            // A token is good once.
            let again = try Child(asNobody + ["guest", "disk", "read", "--connect", sock, "--token", token, "--length", "4096"],
                                  name: "token reused", executable: "/usr/bin/setpriv")
            #expect(await again.waitForExit(seconds: 20).map { $0 != 0 } == true, "\(again.output)")
        }

        @Test func aTokenJoinsItsDomainOnceAndAnUnclaimedDomainExpires() async throws {
            let f = try Fixture()
            try await withCleanup {
                // Joins and creations are round trips to the daemon, blocking: on a thread of
                // their own, never the cooperative pool.
                let (socket, daemon) = (f.socket, f.daemon)
                try await onThread {
                    let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                    defer { dom0.close() }
                    let (id, token) = try dom0.createDomain(frames: 64)
                    #expect(DomainToken(token.description) == token)
                    let guest = try RemoteHypervisor(socketPath: socket, as: .guest(token: token), onDaemonLost: ignoreLoss)
                    defer { guest.close() }
                    #expect(guest.domainID == id)
                    #expect(throws: HypervisorError.self) {
                        _ = try RemoteHypervisor(socketPath: socket, as: .guest(token: token), onDaemonLost: ignoreLoss)
                    }
                    #expect(throws: HypervisorError.self) {
                        _ = try RemoteHypervisor(socketPath: socket, as: .guest(token: DomainToken(high: 1, low: 2)), onDaemonLost: ignoreLoss)
                    }
                    // A guest may not create domains.
                    #expect(throws: HypervisorError.self) { _ = try guest.createDomain(frames: 64) }
                    #expect(daemon.report().domains.contains(id))
                }

                // Nobody comes for this one in time: it is destroyed, store and all.
                let brief = try Fixture { $0.pendingLifetime = 0 }
                try await withCleanup {
                    let briefSocket = brief.socket
                    let (briefDom0, unclaimed, late) = try await onThread { () throws -> (RemoteHypervisor, DomainID, DomainToken) in
                        let briefDom0 = try RemoteHypervisor(socketPath: briefSocket, as: .dom0, onDaemonLost: ignoreLoss)
                        let (unclaimed, late) = try briefDom0.createDomain(frames: 64)
                        return (briefDom0, unclaimed, late)
                    }
                    defer { briefDom0.close() }
                    #expect(await eventually { brief.daemon.pendingDomains == 0 && !brief.daemon.report().domains.contains(unclaimed) })
                    await onThread { () -> Void in
                        #expect(throws: HypervisorError.self) {
                            _ = try RemoteHypervisor(socketPath: briefSocket, as: .guest(token: late), onDaemonLost: ignoreLoss)
                        }
                    }
                } cleanup: {
                    await brief.stop()
                }
            } cleanup: {
                await f.stop()
            }
        }

        /// "The daemon is a confused deputy": a guest points its device's
        /// `backend` key at `/local` and exits. The daemon cleans up from dom0's
        /// backend directory, so `/local` and the other guest's home survive.
        @Test func aGuestsBackendKeyCannotMakeTheDaemonRemoveOthersNodes() async throws {
            let f = try Fixture()
            try await withCleanup {
                // The joins are round trips to the daemon, blocking: on a thread of their own.
                let socket = f.socket
                let (honest, hostile) = try await onThread {
                    (try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64, devices: [.vbd]), onDaemonLost: ignoreLoss),
                     try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64, devices: [.vbd]), onDaemonLost: ignoreLoss))
                }
                defer { honest.close() }
                let hostileID = hostile.domainID
                try await hostile.store.write("device/vbd/51712/backend", "/local")
                try await hostile.store.write("device/x/0/backend", "/local")
                let store = XenStoreClient(transport: try XenStoreSocketTransport(socketPath: f.daemon.storeSocketPath))
                defer { store.close() }
                #expect(try await store.read(XenStorePath.home(of: hostileID) + "/device/x/0/backend") == "/local")
                hostile.close()
                let gone = await eventually {
                    let home = (try? await store.exists(XenStorePath.home(of: hostileID))) ?? true
                    let backend = (try? await store.exists("/local/domain/0/backend/vbd/\(hostileID.rawValue)")) ?? true
                    return !home && !backend
                }
                #expect(gone)
                #expect(try await store.exists("/local"))
                #expect(try await store.exists(XenStorePath.home(of: honest.domainID) + "/device/vbd/51712"))
                #expect(try await store.exists("/local/domain/0/backend/vbd/\(honest.domainID.rawValue)/51712"))
            } cleanup: {
                await f.stop()
            }
        }

        /// "Each bind keeps two fds, with no per-guest cap": a guest gets a bounded
        /// number of ports and of mappings, then `ENOSPC`; others are unaffected.
        @Test func aGuestsPortsAndMappingsAreCapped() async throws {
            let f = try Fixture {
                $0.maxPortsPerGuest = 8
                $0.maxMappingsPerGuest = 4
            }
            try await withCleanup {
                let socket = f.socket
                // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
                try await onThread {
                    let greedy = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    defer { greedy.close() }
                    let events = try greedy.openEventChannels()
                    for _ in 0..<8 { _ = try events.bindUnbound(remote: .dom0) }
                    #expect(failure { _ = try events.bindUnbound(remote: .dom0) } == .errno(.noSpace))

                    let granter = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    defer { granter.close() }
                    let shared = try granter.openGrantSharer().sharePages(count: 1, with: greedy.domainID, writable: false)
                    let mapper = try greedy.openGrantMapper()
                    for _ in 0..<4 { _ = try mapper.map(shared.refs[0], from: granter.domainID, writable: false) }
                    #expect(failure { _ = try mapper.map(shared.refs[0], from: granter.domainID, writable: false) } == .errno(.noSpace))
                    // dom0 is not a guest: its backends bind a port per device queue.
                    let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                    defer { dom0.close() }
                    let dom0Events = try dom0.openEventChannels()
                    for _ in 0..<10 { _ = try dom0Events.bindUnbound(remote: granter.domainID) }
                }
            } cleanup: {
                await f.stop()
            }
        }

        /// A `xenpv hypervisor` process of its own, so that its threads and
        /// descriptors can be counted apart from the tests running beside this one.
        final class DaemonProcess {
            let dir = temporaryDirectory()
            var socket: String { dir + "/hv.sock" }
            let child: Child
            init() async throws {
                child = try Child(["hypervisor", "--socket", dir + "/hv.sock"], name: "hypervisor")
                guard await child.waitFor("listening") else {
                    await child.kill()
                    throw POSIXError(.ETIMEDOUT)
                }
            }
            deinit {
                child.sendKill()
                try? FileManager.default.removeItem(atPath: dir)
            }
        }

        /// "One thread per connection": 200 idle connections cost the daemon
        /// no thread, and each still gets an answer.
        @Test(.timeLimit(.minutes(5))) func idleConnectionsCostTheDaemonNoThread() async throws {
            let d = try await DaemonProcess()
            // One exchange first, so that whatever the daemon starts lazily is running.
            let first = try rawConnection(d.socket)
            var fds: [Int32] = [first]
            defer { for fd in fds { close(fd) } }
            #expect(call(first, WireMessage([999]))?.error?.code == .errno(.invalidArgument))
            let before = threadCount(of: d.child.pid)
            for _ in 0..<200 { fds.append(try rawConnection(d.socket)) }
            for fd in fds { #expect(call(fd, WireMessage([999]))?.error?.code == .errno(.invalidArgument)) }
            let after = threadCount(of: d.child.pid)
            #expect(after < before + 5, "\(after) threads for 201 connections, \(before) for one")
        }

        /// "Anyone can lock the backend out": an untrusted user gets a bounded
        /// number of connections; the one past the cap is closed, the others served.
        @Test func anUntrustedUsersConnectionsAreCapped() async throws {
            let capped = try Fixture {
                $0.trusted.uids = []
                $0.maxConnectionsPerUser = 4
            }
            try await withCleanup {
                var mine: [Int32] = []
                defer { for fd in mine { close(fd) } }
                for _ in 0..<4 { mine.append(try rawConnection(capped.socket)) }
                #expect(await eventually { capped.daemon.report().processes == 4 })
                let extra = try rawConnection(capped.socket)
                defer { close(extra) }
                // Round trips to the daemon, blocking: on a thread of their own, never the pool.
                let first = mine[0]
                await onThread {
                    #expect(call(extra, WireMessage([999])) == nil, "the fifth connection of one user is closed")
                    #expect(call(first, WireMessage([999]))?.error?.code == .errno(.invalidArgument))
                }
            } cleanup: {
                await capped.stop()
            }
        }

        @Test func oneBackendProcessAtATime() async throws {
            let f = try Fixture()
            try await withCleanup {
                let socket = f.socket
                // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
                try await onThread {
                    let first = try RemoteHypervisor(socketPath: socket, as: .backend, onDaemonLost: ignoreLoss)
                    #expect(failure { _ = try RemoteHypervisor(socketPath: socket, as: .backend, onDaemonLost: ignoreLoss) }
                            == .errno(.resourceBusy))
                    // Tools still join as dom0 beside it.
                    let tool = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                    tool.close()
                    // A backend that went away makes room at once, even before the daemon
                    // has seen its socket close (a restarted backend must not be refused).
                    first.close()
                    let second = try RemoteHypervisor(socketPath: socket, as: .backend, onDaemonLost: ignoreLoss)
                    second.close()
                }
            } cleanup: {
                await f.stop()
            }
        }

        /// "Each guest join/leave leaks a shared-info memory file and ~118 KB",
        /// "domain ids are never reused": cycles leave the daemon's descriptors flat.
        @Test(.timeLimit(.minutes(5))) func joinAndLeaveLeakNothing() async throws {
            let d = try await DaemonProcess()
            func cycle() throws {
                let g = try RemoteHypervisor(socketPath: d.socket, as: .newGuest(frames: 16, devices: [.vbd]), onDaemonLost: ignoreLoss)
                let events = try g.openEventChannels()
                _ = try events.bindUnbound(remote: .dom0)
                g.close()
            }
            for _ in 0..<20 { try cycle() }
            // A guest's leave is handled after its socket closes: wait for the count to stop falling.
            var settled = descriptorCount(of: d.child.pid)
            _ = await eventually(5) {
                let now = descriptorCount(of: d.child.pid)
                defer { settled = now }
                return now == settled
            }
            for _ in 0..<300 { try cycle() }
            #expect(await eventually { descriptorCount(of: d.child.pid) <= settled },
                    "\(descriptorCount(of: d.child.pid)) descriptors after 300 cycles, \(settled) before")
        }

        /// `xenpv hypervisor --socket FILE` unlinked whatever was there; `""`
        /// bound an abstract socket.
        @Test func theSocketNeitherReplacesAFileNorGoesAbstract() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let file = dir + "/precious"
            #expect(FileManager.default.createFile(atPath: file, contents: Data("keep".utf8)))
            #expect(throws: HypervisorError.self) { try HypervisorDaemon(socketPath: file, logger: quietLogger()).start() }
            #expect(FileManager.default.contents(atPath: file) == Data("keep".utf8))
            #expect(throws: HypervisorError.self) { try HypervisorDaemon(socketPath: "", logger: quietLogger()).start() }
            let cli = try Child(["hypervisor", "--socket", ""], name: "empty socket")
            #expect(await cli.waitForExit(seconds: 20).map { $0 != 0 } == true, "\(cli.output)")
        }

        /// "On EMFILE its accept loop spins": the daemon out of descriptors stops
        /// accepting for a moment, says so at most once per 10 s, and serves again
        /// once connections close.
        @Test(.timeLimit(.minutes(5))) func outOfDescriptorsTheDaemonBacksOffAndRecovers() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let started = Date()
            let hv = try Child(["--nofile=48:48", xenpvPath(), "hypervisor", "--socket", sock], name: "hypervisor",
                               executable: "/usr/bin/prlimit")
            defer { hv.sendKill() }
            #expect(await hv.waitFor("listening"), "\(hv.output)")
            var fds: [Int32] = []
            for _ in 0..<60 { if let fd = try? rawConnection(sock) { fds.append(fd) } }
            #expect(await hv.waitFor("pausing accepts"), "\(hv.output)")
            // Let the back-off run a while (the kernel keeps queued connects in the backlog).
            try await Task.sleep(nanoseconds: 500_000_000)
            for fd in fds { close(fd) }
            // The join waits for a daemon (another process) that may still pause its accepts:
            // on a thread of its own, never the cooperative pool.
            let dom0 = try await onThread { try RemoteHypervisor(socketPath: sock, as: .dom0, onDaemonLost: ignoreLoss) }
            dom0.close()
            let lines = hv.output.components(separatedBy: "pausing accepts").count - 1
            let allowed = 1 + Int(Date().timeIntervalSince(started) / 10)
            #expect(lines <= allowed, "\(lines) warnings in \(Date().timeIntervalSince(started)) s")
        }
    }
}
