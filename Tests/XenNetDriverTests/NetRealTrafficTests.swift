import Foundation
import NetTestSupport
import TestSupport
import Testing
import XenNetBack
import XenNetFront
import XenNetTap
import XenSimulator

/// A Linux stack as the guest: its TAP (in namespace "guest") is driven by
/// netfront; netback's vif sits on a bridge in namespace "dom0". Real ping
/// and a real TCP transfer cross the rings.
@Suite(.timeLimit(.minutes(5)), .serialized, .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct NetRealTrafficTests {
    @Test func pingBothWaysAndA100MiBTransferKeepsItsChecksum() async throws {
        let dom0 = try await TestNamespace("xpvd0")
        let guestNS = try await TestNamespace("xpvg")
        try await dom0.run("ip", "link", "add", "xpvbr", "type", "bridge")
        try await dom0.run("ip", "addr", "add", "10.77.0.1/24", "dev", "xpvbr")
        try await dom0.run("ip", "link", "set", "xpvbr", "up")

        let f = try NetFixture()
        let offloads: TapOffloads = [.checksum, .tcpv4Segmentation, .tcpv6Segmentation]
        let vif = try NetworkNamespace.run(in: dom0.path) {
            try TapAttachment(name: "vif\(f.guest.domainID.rawValue).0", bridge: "xpvbr", offloads: offloads)
        }
        let guestTap = try NetworkNamespace.run(in: guestNS.path) { try TapDevice(name: "eth0", vnetHeader: true) }
        try guestTap.setOffloads(offloads)
        try await guestNS.run("ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
        try await guestNS.run("ip", "link", "set", "eth0", "up")

        let adapter = NetFrontPump(queue: try f.makeFrontend(), port: TapGuestPort(tap: guestTap), events: f.feEvents)
        adapter.start()
        try f.startBackend(attachment: vif)
        defer { adapter.stop() }

        let pingOut = try spawn(["ip", "netns", "exec", guestNS.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.1"])
        #expect(await exitStatus(of: pingOut, within: 20) == 0, "guest could not ping dom0's bridge")
        let pingIn = try spawn(["ip", "netns", "exec", dom0.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.2"])
        #expect(await exitStatus(of: pingIn, within: 20) == 0, "dom0 could not ping the guest")

        // 100 MiB from the guest to dom0; both ends hash what they saw.
        let server = Pipe()
        let receiver = try spawn(["ip", "netns", "exec", dom0.name, "python3", "-c", Self.receiver], output: server)
        let client = Pipe()
        let sender = try spawn(["ip", "netns", "exec", guestNS.name, "python3", "-c", Self.sender], output: client)
        #expect(await exitStatus(of: sender, within: 120) == 0, "sender failed")
        #expect(await exitStatus(of: receiver, within: 30) == 0, "receiver failed")
        let (sent, received) = await onThread {
            (String(decoding: client.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
             String(decoding: server.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        #expect(sent.count == 65 && sent == received, "sent \(sent) received \(received)")
        #expect(adapter.failure == nil && f.vif.failure == nil)

        adapter.stop()
        vif.tap.close()
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    static let receiver = """
    import hashlib, socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.77.0.1", 5001)); s.listen(1); s.settimeout(60)
    c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    print(h.hexdigest() if n == 100 << 20 else "short %d" % n)
    """

    static let sender = """
    import hashlib, random, socket, time
    r = random.Random(7); block = r.randbytes(1 << 20); h = hashlib.sha256()
    for attempt in range(100):
        try:
            c = socket.create_connection(("10.77.0.1", 5001), timeout=5); break
        except OSError:
            time.sleep(0.1)
    for i in range(100):
        b = bytes([i]) + block[1:]
        c.sendall(b); h.update(b)
    c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
    print(h.hexdigest())
    """
}
