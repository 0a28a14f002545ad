import Foundation
import Logging
import XenABI
import XenBus
import XenNetBack
import XenNetFront
import XenSimulator
import XenStore

/// What the demo does, and how much.
public struct DemoOptions: Sendable {
    /// Frames the guest sends through its NIC (each comes back echoed).
    public var packets = 20_000
    public var packetSize = 1500

    public init() {}
}

/// What the demo measured.
public struct DemoReport: Sendable {
    public var netPackets = 0
    public var netBytes = 0
    public var netSeconds = 0.0
    public var netMismatches = 0
    public var leftovers = Leftovers()

    public var packetsPerSecond: Double { netSeconds > 0 ? Double(netPackets) / netSeconds : 0 }
    public var gigabitsPerSecond: Double { netSeconds > 0 ? Double(netBytes) * 8 / netSeconds / 1e9 : 0 }
}

/// Why the demo stopped.
public struct DemoError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// `xenpv demo`: a whole split-driver host in one process. dom0 runs
/// xenstored and the backends; a guest domain gets a NIC through the
/// toolstack, both ends walk the XenBus handshake, and the guest sends
/// frames that the (echoing) network returns, each checked byte for byte.
public struct Demo {
    public var options: DemoOptions
    public var say: @Sendable (String) -> Void

    public init(options: DemoOptions = DemoOptions(), say: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.say = say
    }

    public func run() async throws -> DemoReport {
        var report = DemoReport()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("xenpv-demo-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: "xenpv")
        logger.logLevel = .warning

        say("Starting the simulated hypervisor, dom0's xenstored and netback")
        let host = try EmbeddedHost(directory: directory, logger: logger) { _, _ in EchoAttachment.make() }
        let guest = try await host.createGuest(frames: 2048)
        say("Created \(guest.domainID) with \(guest.frameCount) frames of 4 KiB")

        let mac = "00:16:3e:00:00:\(String(format: "%02x", guest.domainID.rawValue))"
        let vif = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.create(vif, on: host.store, frontendKeys: ["mac": mac], backendKeys: ["mac": mac])
        say("Toolstack: \(vif.frontendPath) ↔ \(vif.backendPath)")

        let guestStore = try host.store(for: guest.domainID)
        let port = PacketPort()
        let frontend = NetFrontend(hypervisor: guest, store: guestStore, path: vif.frontendPath, port: port, logger: logger)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vif.frontendPath,
                                      peerPath: vif.backendPath, driver: frontend, logger: logger)
        let frontendTask = Task { try await endpoint.run() }
        let started = Date()
        guard await waitUntil(seconds: 10, { endpoint.state == .connected && host.netBackend.vifs.first?.state == .connected }) else {
            throw DemoError("the vif did not connect: frontend \(endpoint.state), backend \(host.netBackend.vifs.first?.state.description ?? "none")")
        }
        say("XenBus handshake: frontend and backend Connected in \(milliseconds(since: started)) ms "
            + "(tx and rx rings, event channel \(try await guestStore.read(vif.frontendPath + "/event-channel")))")

        try await exchangeFrames(port: port, mac: mac, report: &report)
        say(String(format: "NIC: %d frames of %d bytes sent and echoed back intact in %.2f s: %.0f frames/s, %.2f Gbit/s each way",
                   report.netPackets, options.packetSize, report.netSeconds, report.packetsPerSecond, report.gigabitsPerSecond))
        if let counters = host.netBackend.vifs.first?.counters {
            say("netback vif\(guest.domainID.rawValue).0: tx \(counters.txPackets.value) rx \(counters.rxPackets.value) "
                + "notifies \(counters.notifies.value) sleeps \(counters.sleeps.value)")
        }

        say("Unplugging: frontend Closing, backend releases the rings, toolstack removes the device")
        endpoint.requestClose()
        try await frontendTask.value
        try await XenbusToolstack.remove(vif, on: host.store)
        _ = await waitUntil(seconds: 10, { host.netBackend.vifs.isEmpty })
        report.leftovers = host.shutdown()
        say(report.leftovers.isEmpty ? "Hypervisor shut down: no mapped grants, granted pages or open ports left"
                                     : "Hypervisor shut down with leftovers:\n\(report.leftovers)")
        guard report.netMismatches == 0 else { throw DemoError("\(report.netMismatches) frames came back different") }
        guard report.leftovers.isEmpty else { throw DemoError("teardown left resources behind") }
        return report
    }

    /// Sends `options.packets` frames and checks each echo; at most a ring's
    /// worth in flight, so the echo queue never overflows.
    private func exchangeFrames(port: PacketPort, mac: String, report: inout DemoReport) async throws {
        let size = max(60, min(options.packetSize, 65535))
        let source = mac.split(separator: ":").map { UInt8($0, radix: 16)! }
        func frame(_ n: Int) -> [UInt8] {
            var f = [UInt8](repeating: 0xff, count: 6) + source + [0x88, 0xb5]
            withUnsafeBytes(of: UInt64(n).bigEndian) { f += $0 }
            while f.count < size { f.append(UInt8(truncatingIfNeeded: f.count &+ n)) }
            return f
        }
        let total = options.packets
        let window = 128
        var iterator = port.packets.makeAsyncIterator()
        let started = Date()
        var sent = 0, received = 0, mismatches = 0
        while received < total {
            while sent < total, sent - received < window {
                try await port.send(frame(sent))
                sent += 1
            }
            guard let echo = await iterator.next() else { throw DemoError("the NIC's receive stream ended") }
            var expected = frame(received)
            for i in 0 ..< 6 { expected.swapAt(i, 6 + i) }
            if echo.bytes != expected { mismatches += 1 }
            received += 1
            if received % max(1, total / 4) == 0 { say("  … \(received) of \(total) frames echoed") }
        }
        report.netSeconds = Date().timeIntervalSince(started)
        report.netPackets = total
        report.netBytes = total * size
        report.netMismatches = mismatches
    }

    private func milliseconds(since date: Date) -> Int { Int(Date().timeIntervalSince(date) * 1000) }
}

/// Polls `body` every 5 ms for at most `seconds`.
func waitUntil(seconds: Double, _ body: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if body() { return true }
        try? await Task.sleep(nanoseconds: 5_000_000)
    }
    return body()
}
