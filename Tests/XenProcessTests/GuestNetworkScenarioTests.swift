import Foundation
import Glibc
import NetTestSupport
import TestSupport
import Testing
import XenStore
import XenToolstack

/// Issue 15's done-when, end to end, as a person runs it: an in-process hypervisor daemon
/// (whose report the test reads), `xenpv backend` in a "dom0" network namespace, two guests
/// made by `xenpv create` from two config files, each the built `xenpv guest disk …
/// --netns NS` with its own image and a vif in its own mode: the routed guest (vif-route,
/// `ip`) and the NATed guest (vif-nat). Each guest writes and verifies its disk; a second
/// disk is attached to the running routed guest, used and detached; both reach an "outside"
/// namespace (the LAN behind dom0's uplink) by ping and TCP through their PV NICs; shutdown
/// leaves no domain, mapping, port, driver thread, TAP, route or nftables table.
@Suite(.timeLimit(.minutes(10)), .serialized, .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct GuestNetworkScenarioTests {
    /// Runs `args` and requires status 0; its output.
    @discardableResult
    static func must(_ args: String...) async throws -> String {
        let (status, output) = await runCommand(args)
        try #require(status == 0, "\(args.joined(separator: " ")): status \(status): \(output)")
        return output
    }

    static func ping(from ns: String, _ address: String) async -> Bool {
        await runCommand(["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "5", address]).status == 0
    }

    /// A TCP connection from namespace `from` to a listener in `to` at `address:port`; the
    /// peer address the listener saw.
    static func tcp(from: String, to: String, address: String, port: Int) async -> String {
        let listener = """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("\(address)", \(port))); s.listen(1); s.settimeout(120)
            c, peer = s.accept(); c.sendall(b"x"); c.close(); print(peer[0])
            """
        let connector = """
            import socket, time
            for attempt in range(600):
                try:
                    c = socket.create_connection(("\(address)", \(port)), timeout=5); break
                except OSError:
                    time.sleep(0.1)
            assert c.recv(1) == b"x"
            """
        let server = Pipe()
        guard let listening = try? spawn(["ip", "netns", "exec", to, "python3", "-c", listener], output: server) else { return "" }
        let client = await runCommand(["ip", "netns", "exec", from, "python3", "-c", connector])
        _ = await exitStatus(of: listening, within: 120)
        let seen = String(decoding: await onThread { server.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
        return client.status == 0 ? seen.trimmingCharacters(in: .whitespacesAndNewlines) : "connect failed: \(client.output)"
    }

    /// Names of `pid`'s threads that run a driver queue (blkback's and netback's).
    static func driverThreads(of pid: Int32) -> [String] {
        threadNames(of: "\(pid)").filter { $0.hasPrefix("vif ") || $0.hasPrefix("blkback ") }
    }

    @Test func twoGuestsFromConfigsWithDisksAndRoutedAndNATedVifsReachTheOutsideAndLeaveNothing() async throws {
        let dom0 = try await TestNamespace("xpvsd")
        let outside = try await TestNamespace("xpvso")
        let routedNS = try await TestNamespace("xpvsr")
        let natNS = try await TestNamespace("xpvsn")
        // dom0's uplink to the LAN: its address is the host's primary one (vif-route puts it on
        // the vif); the LAN routes the routed guest's address to dom0, and has no way to NAT's /30.
        // Loopback up first: Foundation's Process (the backend's hotplug tools) wakes its run
        // loop through a socket on 127.0.0.1, which a fresh namespace's down loopback refuses.
        try await Self.must("ip", "-n", dom0.name, "link", "set", "lo", "up")
        try await Self.must("ip", "-n", dom0.name, "link", "add", "xpvu0", "type", "veth", "peer", "name", "xpvu1", "netns", outside.name)
        try await Self.must("ip", "-n", dom0.name, "addr", "add", "192.168.81.1/24", "dev", "xpvu0")
        try await Self.must("ip", "-n", dom0.name, "link", "set", "xpvu0", "up")
        try await Self.must("ip", "-n", dom0.name, "route", "add", "default", "via", "192.168.81.2")
        try await Self.must("ip", "-n", outside.name, "addr", "add", "192.168.81.2/24", "dev", "xpvu1")
        try await Self.must("ip", "-n", outside.name, "link", "set", "xpvu1", "up")
        try await Self.must("ip", "-n", outside.name, "route", "add", "10.81.0.5", "via", "192.168.81.1")

        let f = try DaemonFixture()
        try await withCleanup {
            // The backend runs in dom0's namespace: its TAPs, routes and nftables tables are made there.
            let backend = try Child(["ip", "netns", "exec", dom0.name, xenpvPath(), "backend", "--connect", f.socket], name: "backend",
                                    executable: "/usr/bin/env")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving", seconds: 180), "\(backend.output)")
            let store = try XenStoreClient(socketPath: f.socket + ".xenstore")
            defer { store.close() }

            func xenpv(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
                let child = try Child(arguments + ["--connect", f.socket], name: arguments.first ?? "xenpv")
                let status = await child.waitForExit(seconds: 180)
                return (status, child.output)
            }
            func image(_ name: String) -> String {
                let path = f.dir + "/" + name
                _ = FileManager.default.createFile(atPath: path, contents: nil)
                _ = truncate(path, off_t(4 << 20))
                return path
            }
            func config(_ name: String, disk: String, vif: String, extra: String) -> String {
                let path = f.dir + "/" + name + ".cfg"
                let text = """
                    name = "\(name)"
                    kernel = "\(xenpvPath())"
                    extra = "\(extra)"
                    memory = 16
                    disk = [ 'format=raw, vdev=xvda, access=rw, target=\(disk)' ]
                    vif = [ '\(vif)' ]
                    on_poweroff = "destroy"
                    """
                _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
                return path
            }
            func console(_ name: String) -> String {
                (try? String(contentsOfFile: f.socket + ".state/console/guest-\(name).log", encoding: .utf8)) ?? ""
            }
            func consoleShows(_ name: String, _ text: String) async -> Bool { await eventually(180) { console(name).contains(text) } }
            func holdsPattern(_ path: String, seed: UInt8, bytes: Int = 1 << 20) -> Bool {
                guard let data = FileManager.default.contents(atPath: path), data.count >= bytes else { return false }
                return (0..<bytes).allSatisfy { data[$0] == ToolstackCommandTests.pattern(UInt64($0), seed: seed) }
            }

            // Two domains from two config files, each with its own disk and a vif in its own mode.
            let routedDisk = image("routed.img"), natDisk = image("nat.img"), extraDisk = image("extra.img")
            let routedCfg = config("routed", disk: routedDisk, vif: "ip=10.81.0.5, script=vif-route",
                                   extra: "guest disk write-verify --seed 5 --hotplug --connect-timeout 120 --netns \(routedNS.name) --queues 2")
            let natCfg = config("natted", disk: natDisk, vif: "ip=10.82.0.2, script=vif-nat",
                                extra: "guest disk write-verify --seed 6 --until-shutdown --connect-timeout 120 --netns \(natNS.name)")
            let routed = try await xenpv(["create", routedCfg])
            #expect(routed.status == 0, "\(routed.output)")
            let routedID = try #require(ToolstackCommandTests.Host.domid(routed.output), "\(routed.output)")
            let natted = try await xenpv(["create", natCfg])
            #expect(natted.status == 0, "\(natted.output)")
            let nattedID = try #require(ToolstackCommandTests.Host.domid(natted.output), "\(natted.output)")

            // Each program writes and verifies its disk, and has its vif as eth0 in its namespace.
            #expect(await consoleShows("routed", "is eth0 in network namespace \(routedNS.name) (vif-route, 10.81.0.5/32"), "\(console("routed"))")
            #expect(await consoleShows("natted", "is eth0 in network namespace \(natNS.name) (vif-nat, 10.82.0.2/30, default route via 10.82.0.1)"),
                    "\(console("natted"))")
            #expect(await consoleShows("routed", "verified 1048576 bytes at 0"), "\(console("routed"))")
            #expect(await consoleShows("natted", "verified 1048576 bytes at 0"), "\(console("natted"))")
            #expect(holdsPattern(routedDisk, seed: 5) && holdsPattern(natDisk, seed: 6))
            #expect(await consoleShows("routed", "following hotplugged vbds"), "\(console("routed"))")
            #expect(await consoleShows("natted", "waiting for a shutdown request"), "\(console("natted"))")
            // The routed guest asked for two queues: it has what dom0's backend offers (a queue per CPU), up to two.
            let offered = Int((try? await store.read("/local/domain/0/backend/vif/\(routedID)/0/multi-queue-max-queues")) ?? "") ?? 1
            let queues = (try? await store.read("/local/domain/\(routedID)/device/vif/0/multi-queue-num-queues")) ?? "absent"
            #expect(queues == "\(min(2, offered))", "multi-queue-num-queues \(queues), offered \(offered)")
            let record = try #require(StateDirectory.beside(socket: f.socket).record("routed")?.program)
            let natRecord = try #require(StateDirectory.beside(socket: f.socket).record("natted")?.program)

            // A second disk on the running routed guest: attached, written and verified by it, detached.
            let attach = try await xenpv(["block-attach", "routed", "format=raw, vdev=xvdb, access=rw, target=\(extraDisk)"])
            #expect(attach.status == 0, "\(attach.output)")
            #expect(await consoleShows("routed", "verified 1048576 bytes at 0 on vbd 51728"), "\(console("routed"))")
            #expect(holdsPattern(extraDisk, seed: 5))
            let detach = try await xenpv(["block-detach", "routed", "xvdb", "--timeout", "60"])
            #expect(detach.status == 0, "\(detach.output)")
            #expect(await consoleShows("routed", "vbd 51728 unplugged"), "\(console("routed"))")
            let disks = try await xenpv(["block-list", "routed"])
            #expect(disks.output.contains("51712") && !disks.output.contains("51728"), "\(disks.output)")

            // The routed guest and the LAN reach each other; its TCP connection arrives from its own address.
            #expect(await Self.ping(from: routedNS.name, "192.168.81.2"), "the routed guest could not reach the outside")
            #expect(await Self.ping(from: outside.name, "10.81.0.5"), "the outside could not reach the routed guest")
            let routedPeer = await Self.tcp(from: routedNS.name, to: outside.name, address: "192.168.81.2", port: 5081)
            #expect(routedPeer == "10.81.0.5", "the outside saw \(routedPeer)")
            // The NATed guest reaches the LAN as the host (masquerade); the LAN cannot reach it.
            #expect(await Self.ping(from: natNS.name, "192.168.81.2"), "the NATed guest could not reach the outside")
            let natPeer = await Self.tcp(from: natNS.name, to: outside.name, address: "192.168.81.2", port: 5082)
            #expect(natPeer == "192.168.81.1", "the outside saw \(natPeer)")
            #expect(await runCommand(["ip", "netns", "exec", outside.name, "ping", "-c", "1", "-W", "1", "10.82.0.2"]).status != 0)

            // Shutdown: both programs acknowledge and leave; nothing of either domain is left.
            for name in ["routed", "natted"] {
                let shutdown = try await xenpv(["shutdown", name, "--timeout", "180"])
                #expect(shutdown.status == 0 && shutdown.output.contains("Domain \(name) shut down"), "\(shutdown.output)")
            }
            #expect(!record.isRunning && !natRecord.isRunning)
            #expect(await eventually(180) {
                let report = f.daemon.report()
                var stored = false
                for id in [routedID, nattedID] {
                    for path in ["/local/domain/\(id)", "/local/domain/0/backend/vbd/\(id)", "/local/domain/0/backend/vif/\(id)"] {
                        let present = (try? await store.exists(path)) ?? true
                        stored = stored || present
                    }
                }
                let vms = ((try? await store.directory("/vm")) ?? []).count
                return report.domains == [.dom0] && report.mappings == 0 && report.ports == 0 && report.processes == 1 && !stored && vms == 0
            }, "\(f.daemon.report())")
            #expect(await eventually(180) { Self.driverThreads(of: backend.pid).isEmpty }, "\(Self.driverThreads(of: backend.pid))")
            #expect(await eventually(180) {
                let links = await runCommand(["ip", "-n", dom0.name, "-o", "link", "show"]).output
                return !links.contains("vif\(routedID).") && !links.contains("vif\(nattedID).")
            }, "a vif's TAP is left in dom0")
            let route = try await Self.must("ip", "-n", dom0.name, "route", "show", "10.81.0.5")
            #expect(route.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "route left: \(route)")
            let rules = try await Self.must("ip", "netns", "exec", dom0.name, "nft", "list", "ruleset")
            #expect(rules.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "nftables left: \(rules)")
            for ns in [routedNS.name, natNS.name] {
                #expect(await runCommand(["ip", "-n", ns, "link", "show", "eth0"]).status != 0, "the guest's TAP is left in \(ns)")
            }
            #expect(backend.sanitizerClean, "\(backend.output)")
        } cleanup: {
            await f.stop()
        }
    }
}
