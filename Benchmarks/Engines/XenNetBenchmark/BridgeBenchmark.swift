import Foundation
import Glibc
import XenNetBack
import XenNetFront
import XenNetTap

/// iperf3 between two network namespaces through the drivers — a guest
/// namespace whose TAP netfront drives, netback's vif on a bridge in a dom0
/// namespace — against a plain veth pair in the same run. With several queues both TAPs
/// are multi-queue TAPs and each vif queue (a ring pair, a netfront pump thread and a
/// netback thread) serves one TAP queue on each side.
public enum BridgeBenchmark {
    /// The two iperf3 rates of one run.
    public struct Result: Sendable {
        /// How long each iperf3 run lasted, in seconds.
        public var seconds: Double
        /// The vif's queues (ring pairs).
        public var queues: Int = 1
        /// iperf3's parallel streams (`-P`), the same through both.
        public var parallel: Int = 1
        /// Packets each vif queue took from the guest (how the kernel spread the streams).
        public var queuePackets: [UInt64] = []
        /// TCP received through netfront, the netif rings and netback's vif, in Gbit/s.
        public var vifGbit: Double
        /// TCP received through the plain veth pair, in Gbit/s.
        public var vethGbit: Double
        /// ``vifGbit`` over ``vethGbit`` (0 when the veth run moved nothing).
        public var ratio: Double { vethGbit > 0 ? vifGbit / vethGbit : 0 }

        /// One JSON object: `seconds`, `queues`, `parallel`, `vif_gbit_per_second`,
        /// `veth_gbit_per_second`, `ratio`, `queue_tx_packets`.
        public var json: String {
            String(format: #"{"seconds":%.0f,"queues":%d,"parallel":%d,"vif_gbit_per_second":%.3f,"veth_gbit_per_second":%.3f,"ratio":%.3f,"queue_tx_packets":[%@]}"#,
                   seconds, queues, parallel, vifGbit, vethGbit, ratio, queuePackets.map(String.init).joined(separator: ","))
        }
        /// One line for a person.
        public var summary: String {
            String(format: "iperf3 TCP -P %d for %.0f s: through netfront/netback (%d queue%@) %.2f Gbit/s, plain veth %.2f Gbit/s (ratio %.2f)",
                   parallel, seconds, queues, queues == 1 ? "" : "s", vifGbit, vethGbit, ratio)
        }
    }

    /// Why the benchmark could not run (not root, no `/dev/net/tun`, no iperf3, a failed `ip` command).
    public struct Failure: Error, CustomStringConvertible {
        /// What was missing or which command failed.
        public var description: String
    }

    /// Builds both set-ups in fresh namespaces, runs iperf3 TCP for `seconds` with
    /// `parallel` streams (`-P`) through each — the vif with `queues` queues — and removes
    /// the namespaces. Needs root, `/dev/net/tun` and `iperf3`; throws ``Failure`` otherwise,
    /// or the error of a command or driver that failed.
    public static func run(seconds: Double, queues: Int = 1, parallel: Int = 1) throws -> Result {
        guard getuid() == 0, access("/dev/net/tun", R_OK | W_OK) == 0 else {
            throw Failure(description: "needs root and /dev/net/tun (network namespaces and TAP devices)")
        }
        guard (try? shell(["iperf3", "--version"])) != nil else {
            throw Failure(description: "needs iperf3 (apt-get install -y iperf3)")
        }
        let tag = "\(getpid() % 100_000)"
        let dom0 = "xpvb-d\(tag)", guestNS = "xpvb-g\(tag)", vethA = "xpvb-a\(tag)", vethB = "xpvb-b\(tag)"
        defer { for ns in [dom0, guestNS, vethA, vethB] { _ = try? shell(["ip", "netns", "del", ns]) } }
        for ns in [dom0, guestNS, vethA, vethB] { try shell(["ip", "netns", "add", ns]) }

        // The driver path.
        try shell(["ip", "netns", "exec", dom0, "ip", "link", "add", "xpvbr", "type", "bridge"])
        try shell(["ip", "netns", "exec", dom0, "ip", "addr", "add", "10.88.0.1/24", "dev", "xpvbr"])
        try shell(["ip", "netns", "exec", dom0, "ip", "link", "set", "xpvbr", "up"])
        let queues = max(1, queues)
        let pair = try NetRingPair(queues: queues)
        let offloads: TapOffloads = [.checksum, .tcpv4Segmentation, .tcpv6Segmentation]
        let vif = try NetworkNamespace.run(in: "/run/netns/\(dom0)") {
            try TapAttachment(name: "vif\(pair.guest.domainID.rawValue).0", bridge: "xpvbr", offloads: offloads, queues: queues)
        }
        let guestTaps = try NetworkNamespace.run(in: "/run/netns/\(guestNS)") {
            let first = try TapDevice(name: "eth0", vnetHeader: true, multiQueue: queues > 1)
            return try [first] + (1 ..< queues).map { _ in try first.openQueue() }
        }
        try guestTaps[0].setOffloads(offloads)
        try shell(["ip", "netns", "exec", guestNS, "ip", "addr", "add", "10.88.0.2/24", "dev", "eth0"])
        try shell(["ip", "netns", "exec", guestNS, "ip", "link", "set", "eth0", "up"])
        let ports = try TapGuestPort(tap: guestTaps[0], moreQueues: Array(guestTaps.dropFirst())).queuePorts(queues)
        let receivers = vif.receiveQueues(queues)
        var pumps: [NetFrontPump] = []
        var backends: [VifQueue] = []
        for q in 0 ..< queues {
            pumps.append(NetFrontPump(queue: try pair.makeFrontend(queue: q), port: ports[q], events: pair.queues[q].feEvents))
            backends.append(try pair.makeBackend(queue: q, attachment: receivers[q], cpu: nil))
        }
        for p in pumps { p.start() }
        for b in backends { b.start() }
        let vifGbit: Double
        do {
            defer {
                for p in pumps { p.stop() }
                for b in backends { b.stop() }
                vif.closeDevice()
                for t in guestTaps { t.close() }
                pair.close()
            }
            vifGbit = try iperf(server: dom0, address: "10.88.0.1", client: guestNS, seconds: seconds, parallel: parallel)
        }
        let queuePackets = backends.map { $0.counters.txPackets.value }

        // The same through a plain veth pair.
        try shell(["ip", "link", "add", "xpvva\(tag)", "type", "veth", "peer", "name", "xpvvb\(tag)"])
        try shell(["ip", "link", "set", "xpvva\(tag)", "netns", vethA])
        try shell(["ip", "link", "set", "xpvvb\(tag)", "netns", vethB])
        try shell(["ip", "netns", "exec", vethA, "ip", "addr", "add", "10.89.0.1/24", "dev", "xpvva\(tag)"])
        try shell(["ip", "netns", "exec", vethB, "ip", "addr", "add", "10.89.0.2/24", "dev", "xpvvb\(tag)"])
        try shell(["ip", "netns", "exec", vethA, "ip", "link", "set", "xpvva\(tag)", "up"])
        try shell(["ip", "netns", "exec", vethB, "ip", "link", "set", "xpvvb\(tag)", "up"])
        let vethGbit = try iperf(server: vethA, address: "10.89.0.1", client: vethB, seconds: seconds, parallel: parallel)
        return Result(seconds: seconds, queues: queues, parallel: parallel, queuePackets: queuePackets, vifGbit: vifGbit,
                      vethGbit: vethGbit)
    }

    /// One iperf3 TCP run from `client` to a one-shot server in `server`;
    /// the received rate in Gbit/s.
    static func iperf(server: String, address: String, client: String, seconds: Double, parallel: Int) throws -> Double {
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        daemon.arguments = ["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", address]
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { daemon.terminate() } }
        var output = ""
        for _ in 0 ..< 50 {
            usleep(100_000)
            if let out = try? shell(["ip", "netns", "exec", client, "iperf3", "-c", address, "-t", String(Int(seconds)),
                                          "-P", String(max(1, parallel)), "-J"]) {
                output = out
                break
            }
        }
        guard let data = output.data(using: .utf8),
              let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let end = root["end"] as? [String: Any], let received = end["sum_received"] as? [String: Any],
              let bits = received["bits_per_second"] as? Double else {
            throw Failure(description: "iperf3 from \(client) to \(address) gave no result")
        }
        return bits / 1e9
    }

    @discardableResult
    static func shell(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Failure(description: "\(args.joined(separator: " ")) failed") }
        return String(decoding: data, as: UTF8.self)
    }
}
