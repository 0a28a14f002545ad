import Foundation
import NetTestSupport
import TestSupport
import XenBus
import Testing
import XenNetBack
import XenNetFront
import XenNetTap

/// A two-queue vif between real Linux stacks: the guest's eth0 is a multi-queue TAP whose
/// queues netfront's two pumps drive; netback's hotplug makes `vifD.N` a multi-queue TAP on
/// a bridge in a "dom0" namespace. Sixteen TCP connections each arrive with the sender's
/// SHA-256, and both queues carry traffic both ways (the kernels steer each flow to one
/// queue; sixteen random flows all on one queue has odds of 2^-15).
@Suite(.timeLimit(.minutes(5)), .serialized, .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct NetMultiQueueRealTrafficTests {
    @Test func sixteenTCPConnectionsOverTwoQueuesKeepTheirBytes() async throws {
        let dom0 = try await TestNamespace("xpvmqd")
        let guestNS = try await TestNamespace("xpvmqg")
        try await sh("ip", "-n", dom0.name, "link", "add", "xpvbr", "type", "bridge")
        try await sh("ip", "-n", dom0.name, "addr", "add", "10.93.0.1/24", "dev", "xpvbr")
        try await sh("ip", "-n", dom0.name, "link", "set", "xpvbr", "up")
        let taps = try NetworkNamespace.run(in: guestNS.path) {
            let first = try TapDevice(name: "eth0", vnetHeader: true, multiQueue: true)
            return [first, try first.openQueue()]
        }
        let dom0Name = dom0.name
        let w = try await NetStoreWorld(
            frames: 4096, backendKeys: ["script": "vif-bridge", "bridge": "xpvbr", "vifname": "xpvmq.0"],
            maxQueues: 2, queues: 2,
            attach: { store, backend in
                VifHotplug.factory(store: store, backend: backend, defaultBridge: nil, namespace: dom0Name) { _, _ in
                    throw NetBackendError(.hotplug, "no script")
                }
            },
            guestPort: TapGuestPort(tap: taps[0], moreQueues: [taps[1]]))
        #expect(await w.bothConnected())
        let queues = try #require(w.backend.devices.entries.first?.driver).queues
        try #require(queues.count == 2)
        let sysfs = try await sh("ip", "netns", "exec", dom0.name, "ls", "/sys/class/net/xpvmq.0/queues")
        #expect(sysfs.split(separator: "\n").filter { $0.hasPrefix("tx-") }.count == 2, "\(sysfs)")
        try await sh("ip", "-n", guestNS.name, "addr", "add", "10.93.0.2/24", "dev", "eth0")
        try await sh("ip", "-n", guestNS.name, "link", "set", "eth0", "up")

        let server = Pipe()
        let receiver = try spawn(["ip", "netns", "exec", dom0.name, "python3", "-c", Self.receiver], output: server)
        let client = Pipe()
        let sender = try spawn(["ip", "netns", "exec", guestNS.name, "python3", "-c", Self.sender], output: client)
        let sent = (await exitStatus(of: sender, within: 180), await exitStatus(of: receiver, within: 60))
        #expect(sent == (0, 0), "sender/receiver exit status")
        let (sentHashes, receivedHashes) = await onThread {
            (String(decoding: client.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
             String(decoding: server.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        #expect(sentHashes.split(separator: "\n").count == 16 && sentHashes == receivedHashes,
                "sent \(sentHashes) received \(receivedHashes)")
        #expect(queues.allSatisfy { $0.counters.txPackets.value > 0 && $0.counters.rxPackets.value > 0 },
                "tx \(queues.map { $0.counters.txPackets.value }) rx \(queues.map { $0.counters.rxPackets.value })")
        #expect(queues.allSatisfy { $0.failure == nil })
        #expect(w.frontend.pumps.allSatisfy { $0.failure == nil })

        // Unplug: both queues' threads end, the TAP goes, nothing is left in the simulator.
        w.endpoint.requestClose()
        try await w.frontendTask.value
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        #expect(queues.allSatisfy { $0.threadState == .joined })
        #expect(!(await VifNetworkModeTests.hasLink(dom0, "xpvmq.0")))
        for t in taps { t.close() }
        let leftovers = w.hv.shutdown()
        #expect(leftovers.isEmpty, "\(leftovers)")
        try await w.close()
    }

    static let receiver = """
    import hashlib, socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.93.0.1", 5002)); s.listen(16); s.settimeout(60)
    out = []; lock = threading.Lock()
    def serve(c):
        c.settimeout(60); h = hashlib.sha256()
        while True:
            b = c.recv(1 << 20)
            if not b: break
            h.update(b)
        c.sendall(b"k"); c.close()
        with lock: out.append(h.hexdigest())
    ts = []
    for i in range(16):
        c, _ = s.accept(); t = threading.Thread(target=serve, args=(c,)); t.start(); ts.append(t)
    for t in ts: t.join()
    print("\\n".join(sorted(out)))
    """

    static let sender = """
    import hashlib, random, socket, threading, time
    out = []; lock = threading.Lock()
    def send(i):
        r = random.Random(i); block = r.randbytes(1 << 18); h = hashlib.sha256()
        for attempt in range(200):
            try:
                c = socket.create_connection(("10.93.0.1", 5002), timeout=5); break
            except OSError:
                time.sleep(0.1)
        for k in range(8):
            b = bytes([k, i]) + block[2:]
            c.sendall(b); h.update(b)
        c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
        with lock: out.append(h.hexdigest())
    ts = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in ts: t.start()
    for t in ts: t.join()
    print("\\n".join(sorted(out)))
    """
}
