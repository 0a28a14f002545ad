import Foundation
import NetTestSupport
import TestSupport
import Testing
import XenABI
import XenBus
import XenNetBack
import XenNetFront
import XenNetTap
import XenLocks
import XenStore

/// A vif's backend directory as netback's hotplug reads it: good values taken, hostile ones
/// refused with the key named.
@Suite struct VifHotplugSettingsTests {
    let id = VifIdentity(frontend: DomainID(3), id: 1)

    @Test func readsTheThreeScriptsAndTheirKeys() throws {
        let bridge = try #require(try VifHotplugSettings(keys: ["script": "vif-bridge", "bridge": "xenbr0"], identity: id))
        #expect(bridge == VifHotplugSettings(script: .bridge, interfaceName: "vif3.1", bridge: "xenbr0"))
        let route = try #require(try VifHotplugSettings(
            keys: ["script": "/etc/xen/scripts/vif-route", "ip": "192.0.2.10  198.51.100.0/24", "vifname": "guest-1_a.b"],
            identity: id))
        #expect(route.script == .route && route.interfaceName == "guest-1_a.b")
        #expect(route.addresses.map(\.description) == ["192.0.2.10/32", "198.51.100.0/24"])
        #expect(try VifHotplugSettings(keys: ["script": "vif-nat"], identity: id)?.script == .nat)
        // No script: a vif the daemon plugged, left to the backend's default.
        #expect(try VifHotplugSettings(keys: ["bridge": "xenbr0"], identity: id) == nil)
    }

    @Test(arguments: [
        ["script": "../../bin/sh"], ["script": "/bin/sh"], ["script": "../vif-bridge"], ["script": "/etc/../vif-route"],
        ["script": "vif-bridge; rm -rf /"], ["script": ""], ["script": "vif-nat", "ip": "300.1.1.1"],
        ["script": "vif-route", "ip": "10.0.0.01"], ["script": "vif-route", "ip": "10.0.0.1/33"],
        ["script": "vif-route", "ip": "10.0.0.1/"], ["script": "vif-route", "ip": "10.0.0"], ["script": "vif-route", "ip": " "],
        ["script": "vif-route", "ip": "-1.0.0.1"], ["script": "vif-bridge", "bridge": "a-very-long-bridge-name"],
        ["script": "vif-bridge", "bridge": "br 0"], ["script": "vif-bridge", "bridge": "br\"0"], ["script": "vif-bridge", "bridge": ".."],
        ["script": "vif-bridge", "bridge": ""], ["script": "vif-bridge", "vifname": "x/y"],
    ])
    func refusesHostileValues(_ keys: [String: String]) {
        #expect(throws: NetBackendError.self) { try VifHotplugSettings(keys: keys, identity: id) }
    }

    /// A backend directory whose reads answer only once all four hotplug keys (`script`,
    /// `bridge`, `ip`, `vifname`) are in flight together
    /// (they run in the vif's connect, a migrated guest's downtime), failing for `refused`.
    private final class GatedDirectory: XenStoreOperations {
        let values: [String: String]
        let refused: Set<String>
        let arrived = Locked(0)
        init(_ values: [String: String], refused: Set<String> = []) { (self.values, self.refused) = (values, refused) }

        func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
            let path = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
            let key = String(path.split(separator: "/").last ?? "")
            arrived.withLock { $0 += 1 }
            guard await eventually(60, { self.arrived.withLock { $0 } >= 4 }) else {
                throw XenStoreError(.busy, "\(key) was read alone")
            }
            if refused.contains(key) { throw XenStoreError(.accessDenied, "\(key)") }
            guard let value = values[key] else { throw XenStoreError(.noEntry, "\(key)") }
            return XenStoreMessage(type: type, payload: Array(value.utf8))
        }
    }

    @Test func theKeysAreReadTogetherAndTheFirstFailingOneIsNamed() async throws {
        let dir = "/local/domain/0/backend/vif/3/1"
        let settings = try await VifHotplug.settings(directory: dir, store: GatedDirectory(["script": "vif-bridge", "bridge": "xenbr1"]),
                                                     identity: id)
        #expect(settings?.script == .bridge)
        let refused = GatedDirectory(["script": "vif-route"], refused: ["ip", "vifname"])
        let error = await #expect(throws: NetBackendError.self) { try await VifHotplug.settings(directory: dir, store: refused, identity: id) }
        #expect("\(error.map { "\($0)" } ?? "")".contains("reading ip"), "\(String(describing: error))")
    }

    @Test func parsesAddressesStrictly() {
        #expect(VifIPv4("10.1.2.3")?.address == 0x0a01_0203)
        #expect(VifIPv4("0.0.0.0/0")?.prefix == 0)
        for bad in ["300.1.1.1", "1.2.3.4.5", "1.2.3", "01.2.3.4", "1.2.3.4/033", "1.2.3.4/-1", "1..2.3", "a.b.c.d", "1.2.3.4/"] {
            #expect(VifIPv4(bad) == nil, "\(bad)")
        }
        #expect(VifHotplug.natTable("vif1.0") == "xenpv_vif1_d0")
        #expect(VifHotplug.natTable("a_b-c") == "xenpv_a__b_hc")
    }
}

struct CommandFailed: Error { var command: String; var status: Int32; var output: String }

/// Runs `args` off the pool and requires status 0.
@discardableResult
func sh(_ args: String...) async throws -> String {
    let (status, output) = await runCommand(args)
    guard status == 0 else { throw CommandFailed(command: args.joined(separator: " "), status: status, output: output) }
    return output
}

/// Each of the three modes of Xen's vif scripts, end to end: the toolstack's keys in the
/// vif's backend directory, netback's hotplug in a "dom0" namespace, the guest's Linux
/// stack on netfront's TAP port in its own namespace; real ping and TCP; after unplug no
/// interface, route or nftables rule is left.
@Suite(.timeLimit(.minutes(3)), .serialized, .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct VifNetworkModeTests {
    static let offloads: TapOffloads = [.checksum, .tcpv4Segmentation, .tcpv6Segmentation]

    /// A guest in namespace `ns` whose eth0 is netfront's TAP port; netback's hotplug in `dom0`.
    static func guest(_ ns: TestNamespace, dom0: TestNamespace, keys: [String: String]) async throws -> NetStoreWorld {
        let tap = try NetworkNamespace.run(in: ns.path) { try TapDevice(name: "eth0", vnetHeader: true) }
        try tap.setOffloads(offloads)
        let dom0Name = dom0.name
        let w = try await NetStoreWorld(
            backendKeys: keys,
            attach: { store, backend in
                VifHotplug.factory(store: store, backend: backend, defaultBridge: nil, namespace: dom0Name) { _, _ in
                    throw NetBackendError(.hotplug, "no script")
                }
            },
            guestPort: TapGuestPort(tap: tap))
        try await sh("ip", "-n", ns.name, "link", "set", "eth0", "up")
        return w
    }

    /// Whether dom0's namespace still has interface `name`.
    static func hasLink(_ dom0: TestNamespace, _ name: String) async -> Bool {
        await runCommand(["ip", "-n", dom0.name, "link", "show", name]).status == 0
    }

    static func ping(from ns: TestNamespace, _ address: String) async -> Bool {
        await runCommand(["ip", "netns", "exec", ns.name, "ping", "-c", "2", "-i", "0.2", "-W", "5", address]).status == 0
    }

    @Test func bridgeTwoGuestsPingEachOtherAndUnplugLeavesNoInterface() async throws {
        let dom0 = try await TestNamespace("xpvhb")
        let g1 = try await TestNamespace("xpvhb1")
        let g2 = try await TestNamespace("xpvhb2")
        try await sh("ip", "-n", dom0.name, "link", "add", "xpvbr", "type", "bridge")
        try await sh("ip", "-n", dom0.name, "link", "set", "xpvbr", "up")
        let w1 = try await Self.guest(g1, dom0: dom0, keys: ["script": "vif-bridge", "bridge": "xpvbr", "vifname": "xpv1.0"])
        let w2 = try await Self.guest(g2, dom0: dom0, keys: ["script": "vif-bridge", "bridge": "xpvbr", "vifname": "xpv2.0"])
        let one = await w1.bothConnected()
        let two = await w2.bothConnected()
        #expect(one && two)
        try await sh("ip", "-n", g1.name, "addr", "add", "10.91.0.2/24", "dev", "eth0")
        try await sh("ip", "-n", g2.name, "addr", "add", "10.91.0.3/24", "dev", "eth0")
        let master = try await sh("ip", "-n", dom0.name, "-o", "link", "show", "master", "xpvbr")
        #expect(master.contains("xpv1.0") && master.contains("xpv2.0"), "\(master)")
        #expect(await Self.ping(from: g1, "10.91.0.3"), "guest 1 could not ping guest 2 across the bridge")
        #expect(await Self.ping(from: g2, "10.91.0.2"))

        try await w1.close()
        try await w2.close()
        #expect(await eventually(60) {
            let one = await Self.hasLink(dom0, "xpv1.0")
            let two = await Self.hasLink(dom0, "xpv2.0")
            return !one && !two
        },
                "a vif's TAP is still there after unplug")
    }

    @Test func routeHostRoutesTheGuestAddressAndTheGuestReachesTheHost() async throws {
        let dom0 = try await TestNamespace("xpvhr")
        let g = try await TestNamespace("xpvhr1")
        let outside = try await TestNamespace("xpvhro")
        // dom0's uplink to a "LAN" namespace: its primary address is what vif-route puts on the
        // vif; the LAN routes the guest's address to dom0.
        try await sh("ip", "-n", dom0.name, "link", "add", "xpvu0", "type", "veth", "peer", "name", "xpvu1", "netns", outside.name)
        try await sh("ip", "-n", dom0.name, "addr", "add", "192.168.71.1/24", "dev", "xpvu0")
        try await sh("ip", "-n", dom0.name, "link", "set", "xpvu0", "up")
        try await sh("ip", "-n", dom0.name, "route", "add", "default", "via", "192.168.71.2")
        try await sh("ip", "-n", outside.name, "addr", "add", "192.168.71.2/24", "dev", "xpvu1")
        try await sh("ip", "-n", outside.name, "link", "set", "xpvu1", "up")
        try await sh("ip", "-n", outside.name, "route", "add", "10.71.0.5", "via", "192.168.71.1")
        let w = try await Self.guest(g, dom0: dom0, keys: ["script": "vif-route", "ip": "10.71.0.5", "vifname": "xpvr1.0"])
        #expect(await w.bothConnected())
        try await sh("ip", "-n", g.name, "addr", "add", "10.71.0.5/32", "dev", "eth0")
        try await sh("ip", "-n", g.name, "route", "add", "default", "dev", "eth0")

        let route = try await sh("ip", "-n", dom0.name, "route", "show", "10.71.0.5")
        #expect(route.contains("dev xpvr1.0") && route.contains("src 192.168.71.1"), "\(route)")
        let proxy = try await sh("ip", "netns", "exec", dom0.name, "sysctl", "-n", "net/ipv4/conf/xpvr1.0/proxy_arp")
        #expect(proxy.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        let forward = try await sh("ip", "netns", "exec", dom0.name, "sysctl", "-n", "net.ipv4.ip_forward")
        #expect(forward.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        #expect(await Self.ping(from: dom0, "10.71.0.5"), "the host could not ping the guest through its host route")
        #expect(await Self.ping(from: g, "192.168.71.1"), "the guest could not reach the host's address")
        #expect(await Self.ping(from: g, "192.168.71.2"), "the guest could not reach the LAN through the host")
        #expect(await Self.ping(from: outside, "10.71.0.5"), "the LAN could not reach the routed guest")

        try await w.close()
        #expect(await eventually(60) { await !Self.hasLink(dom0, "xpvr1.0") })
        let after = try await sh("ip", "-n", dom0.name, "route", "show", "10.71.0.5")
        #expect(after.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "route left: \(after)")
    }

    @Test func natGuestReachesTheOutsideAsTheHostAndUnplugRemovesTheRule() async throws {
        let dom0 = try await TestNamespace("xpvhn")
        let g = try await TestNamespace("xpvhn1")
        let outside = try await TestNamespace("xpvhno")
        // The "LAN": a veth to a namespace that has no route back to the guest's /30.
        try await sh("ip", "-n", dom0.name, "link", "add", "xpvo0", "type", "veth", "peer", "name", "xpvo1", "netns", outside.name)
        try await sh("ip", "-n", dom0.name, "addr", "add", "192.168.72.1/24", "dev", "xpvo0")
        try await sh("ip", "-n", dom0.name, "link", "set", "xpvo0", "up")
        try await sh("ip", "-n", outside.name, "addr", "add", "192.168.72.2/24", "dev", "xpvo1")
        try await sh("ip", "-n", outside.name, "link", "set", "xpvo1", "up")
        let w = try await Self.guest(g, dom0: dom0, keys: ["script": "vif-nat", "ip": "10.72.0.2", "vifname": "xpvn1.0"])
        #expect(await w.bothConnected())
        try await sh("ip", "-n", g.name, "addr", "add", "10.72.0.2/30", "dev", "eth0")
        try await sh("ip", "-n", g.name, "route", "add", "default", "via", "10.72.0.1")
        let addr = try await sh("ip", "-n", dom0.name, "-o", "addr", "show", "dev", "xpvn1.0")
        #expect(addr.contains("10.72.0.1/30"), "\(addr)")
        let rules = try await sh("ip", "netns", "exec", dom0.name, "nft", "list", "ruleset")
        #expect(rules.contains("masquerade") && rules.contains("10.72.0.0/30"), "\(rules)")

        #expect(await Self.ping(from: g, "192.168.72.2"), "the guest could not reach the outside through NAT")
        // TCP from the guest: the outside sees the host's address as the source.
        let server = Pipe()
        let listener = try spawn(["ip", "netns", "exec", outside.name, "python3", "-c", Self.peerPrinter], output: server)
        let client = await runCommand(["ip", "netns", "exec", g.name, "python3", "-c", Self.connector])
        #expect(client.status == 0, "the guest's TCP connection failed: \(client.output)")
        _ = await exitStatus(of: listener, within: 60)
        let seen = String(decoding: await onThread { server.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
        #expect(seen.trimmingCharacters(in: .whitespacesAndNewlines) == "192.168.72.1", "the outside saw \(seen)")
        // Unsolicited inbound: the outside has no way to the guest's private address.
        #expect(await runCommand(["ip", "netns", "exec", outside.name, "ping", "-c", "1", "-W", "1", "10.72.0.2"]).status != 0)

        try await w.close()
        #expect(await eventually(60) { await !Self.hasLink(dom0, "xpvn1.0") })
        let left = try await sh("ip", "netns", "exec", dom0.name, "nft", "list", "ruleset")
        #expect(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "nftables left: \(left)")
    }

    @Test(arguments: [
        (["script": "vif-bridge", "bridge": "nosuchbr0"], "nosuchbr0"),
        (["script": "vif-route", "ip": "300.1.1.1"], "300.1.1.1"),
        (["script": "vif-nat", "ip": "10.73.0.3"], "broadcast"),
        (["script": "../../bin/sh"], "script"),
    ])
    func aBadValueFailsThatVifWithTheReasonInItsErrorKey(_ keys: [String: String], _ reason: String) async throws {
        let dom0 = try await TestNamespace("xpvhh")
        let dom0Name = dom0.name
        let w = try await NetStoreWorld(
            backendKeys: keys.merging(["vifname": "xpvh1.0"]) { a, _ in a },
            attach: { store, backend in
                VifHotplug.factory(store: store, backend: backend, defaultBridge: nil, namespace: dom0Name) { _, _ in
                    throw NetBackendError(.hotplug, "no script")
                }
            })
        let error = try await w.backendError(within: 60)
        #expect(error?.contains(reason) == true, "error key: \(error ?? "none")")
        #expect(await !Self.hasLink(dom0, "xpvh1.0"), "a refused vif left its TAP")
        let rules = try await sh("ip", "netns", "exec", dom0.name, "nft", "list", "ruleset")
        #expect(rules.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        w.endpoint.requestClose()
        try? await w.close()
    }
}

private extension VifNetworkModeTests {
    static let peerPrinter = """
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("192.168.72.2", 5072)); s.listen(1); s.settimeout(60)
    c, peer = s.accept(); c.sendall(b"x"); c.close(); print(peer[0])
    """

    static let connector = """
    import socket, time
    for attempt in range(200):
        try:
            c = socket.create_connection(("192.168.72.2", 5072), timeout=5); break
        except OSError:
            time.sleep(0.1)
    assert c.recv(1) == b"x"
    """
}
