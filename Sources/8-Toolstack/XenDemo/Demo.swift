import Foundation
import Logging
import XenABI
import SystemPackage
import XenBlockFront
import XenBus
import XenEmbeddedHost
import XenNetBack
import XenNetFront
import XenSimulator
import XenStore

/// What the demo does, and how much.
public struct DemoOptions: Sendable {
    /// Frames the guest sends through its NIC (each comes back echoed).
    public var packets = 20_000
    /// Bytes per frame, clamped to 60...65535.
    public var packetSize = 1500
    /// The disk image; nil makes a sparse one in a temporary directory.
    public var diskPath: String?
    /// Size of the sparse image made when `diskPath` is nil.
    public var diskBytes: UInt64 = 256 << 20
    /// Bytes written at random offsets, then read back and checked.
    public var diskWriteBytes = 32 << 20
    /// Seconds each handshake (and each unplug) may take: a machine whose cores
    /// are busy with other work (tests run in parallel) needs more than an idle one.
    public var handshakeSeconds: Double = 10

    /// The defaults listed on each property.
    public init() {}
}

/// What the demo measured.
public struct DemoReport: Sendable {
    /// Frames sent and echoed back.
    public var netPackets = 0
    /// Bytes those frames carried, one way.
    public var netBytes = 0
    /// Wall-clock seconds the frame exchange took.
    public var netSeconds = 0.0
    /// Echoed frames that differed from what was sent.
    public var netMismatches = 0
    /// Bytes written to the disk and read back.
    public var diskBytes = 0
    /// Wall-clock seconds of the writes and the flush after them.
    public var diskWriteSeconds = 0.0
    /// Wall-clock seconds of the reads.
    public var diskReadSeconds = 0.0
    /// Chunks that read back different from what was written.
    public var diskMismatches = 0
    /// What the simulated hypervisor found still mapped, granted or bound at shutdown.
    public var leftovers = Leftovers()

    /// Frames echoed per second; 0 before the exchange ran.
    public var packetsPerSecond: Double { netSeconds > 0 ? Double(netPackets) / netSeconds : 0 }
    /// Write throughput in MiB/s (flush included); 0 before the writes ran.
    public var diskWriteMiBps: Double { diskWriteSeconds > 0 ? Double(diskBytes) / diskWriteSeconds / 1_048_576 : 0 }
    /// Read throughput in MiB/s; 0 before the reads ran.
    public var diskReadMiBps: Double { diskReadSeconds > 0 ? Double(diskBytes) / diskReadSeconds / 1_048_576 : 0 }
    /// Frame throughput each way in Gbit/s (10^9 bits); 0 before the exchange ran.
    public var gigabitsPerSecond: Double { netSeconds > 0 ? Double(netBytes) * 8 / netSeconds / 1e9 : 0 }
}

/// Why the demo stopped.
public struct DemoError: Error, CustomStringConvertible {
    /// What went wrong, for the user.
    public var description: String
    init(_ description: String) { self.description = description }
}

/// `xenpv demo`: a whole split-driver host in one process. dom0 runs
/// xenstored and the backends; a guest domain gets a disk and a NIC through
/// the toolstack, both ends of each walk the XenBus handshake, the guest
/// writes the disk at random offsets and reads it all back, and sends frames
/// that the (echoing) network returns, every byte checked.
public struct Demo: Sendable {
    /// What to do, and how much.
    public var options: DemoOptions
    /// Called with each progress line, in order.
    public var say: @Sendable (String) -> Void

    /// A demo with `options` that reports progress through `say`.
    public init(options: DemoOptions = DemoOptions(), say: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.say = say
    }

    /// Runs the demo: plugs a disk and a NIC into a new guest, writes and verifies the disk,
    /// exchanges and verifies frames, unplugs both and shuts the host down.
    /// - Returns: what was measured.
    /// - Throws: ``DemoError`` when a device does not connect in time, data comes back
    ///   different, or the hypervisor reports leftovers; the store's, the simulator's and the
    ///   drivers' errors as they come.
    public func run() async throws -> DemoReport {
        var report = DemoReport()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("xenpv-demo-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var logger = Logger(label: "xenpv")
        logger.logLevel = .warning

        say("Starting the simulated hypervisor, dom0's xenstored, netback and blkback")
        let host = try EmbeddedHost(directory: directory, logger: logger) { _, _ in EchoAttachment.make() }
        try await host.startBlockBackend()
        let guest = try await host.createGuest(frames: 4096)
        say("Created \(guest.domainID) with \(guest.frameCount) frames of 4 KiB")
        let guestStore = try host.store(for: guest.domainID)

        try await runDisk(host: host, guest: guest, guestStore: guestStore, directory: directory, logger: logger, report: &report)

        // One byte of the domain id: a wider id would make seven hex digits, no MAC.
        let mac = "00:16:3e:00:00:\(String(format: "%02x", guest.domainID.rawValue & 0xff))"
        let vif = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.create(vif, on: host.store, frontendKeys: ["mac": mac], backendKeys: ["mac": mac])
        say("Toolstack: \(vif.frontendPath) ↔ \(vif.backendPath)")

        let port = PacketPort()
        let frontend = NetFrontendDriver(hypervisor: guest, store: guestStore, path: vif.frontendPath, port: port, logger: logger)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vif.frontendPath,
                                      peerPath: vif.backendPath, driver: frontend, logger: logger)
        let frontendTask = Task { try await endpoint.run() }
        let started = Date()
        // The frontend publishes Connected only after it saw the backend's Connected,
        // which the backend writes once its queue runs.
        do { try await endpoint.connected(timeout: .seconds(options.handshakeSeconds)) } catch {
            throw DemoError("the vif did not connect: \(error), backend \(host.netBackend.vifs.first?.state.description ?? "none")")
        }
        say("XenBus handshake: frontend and backend Connected in \(milliseconds(since: started)) ms "
            + "(tx and rx rings, event channel \(try await guestStore.read(vif.frontendPath + "/event-channel")))")

        let exchange = try await withDeadline(seconds: 120, "the NIC's frame exchange") {
            try await exchangeFrames(port: port, mac: mac)
        }
        report.netSeconds = exchange.seconds
        report.netPackets = options.packets
        report.netBytes = options.packets * max(60, min(options.packetSize, 65535))
        report.netMismatches = exchange.mismatches
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
        _ = await waitUntil(seconds: options.handshakeSeconds, { host.netBackend.vifs.isEmpty })
        report.leftovers = await host.shutdown()
        say(report.leftovers.isEmpty ? "Hypervisor shut down: no mapped grants, granted pages or open ports left"
                                     : "Hypervisor shut down with leftovers:\n\(report.leftovers)")
        guard report.netMismatches == 0 else { throw DemoError("\(report.netMismatches) frames came back different") }
        guard report.diskMismatches == 0 else { throw DemoError("\(report.diskMismatches) disk chunks read back different") }
        guard report.leftovers.isEmpty else { throw DemoError("teardown left resources behind") }
        return report
    }

    /// Plugs a disk (xvda), writes chunks at random offsets, flushes, reads
    /// every chunk back and compares, then unplugs it.
    private func runDisk(host: EmbeddedHost, guest: SimulatedDomain, guestStore: XenStoreClient, directory: URL,
                         logger: Logger, report: inout DemoReport) async throws {
        let image: String
        if let path = options.diskPath {
            guard FileManager.default.fileExists(atPath: path) else { throw DemoError("no disk image at \(path)") }
            image = path
        } else {
            image = directory.appendingPathComponent("disk.img").path
            let fd = try FileDescriptor.open(FilePath(image), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
            let size = off_t(options.diskBytes)
            try fd.closeAfter { guard ftruncate(fd.rawValue, size) == 0 else { throw DemoError("cannot size \(image)") } }
            say("Made a sparse \(options.diskBytes >> 20) MiB disk image at \(image)")
        }
        let vbd = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)  // xvda
        try await XenbusToolstack.create(vbd, on: host.store, backendKeys: ["params": image, "mode": "w", "type": "file"])
        let sharer = try guest.openGrantSharer()
        let driver = BlockFrontendDriver(device: vbd, store: guestStore, hypervisor: guest, sharer: sharer)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vbd.frontendPath,
                                      peerPath: vbd.backendPath, driver: driver, logger: logger)
        let task = Task { try await endpoint.run() }
        let started = Date()
        // Connected is published after `connect` attached the frontend, so `info` is set.
        do { try await endpoint.connected(timeout: .seconds(options.handshakeSeconds)) } catch {
            throw DemoError("the disk did not connect: \(error)")
        }
        guard let info = driver.frontend.info else { throw DemoError("the disk connected without its size") }
        say("Disk xvda: Connected in \(milliseconds(since: started)) ms, \(info.sectors) sectors of \(info.sectorSize) bytes")

        // Chunks of 64 KiB to 1 MiB at random 4 KiB-aligned offsets, not overlapping.
        var rng = SplitMix(seed: 0x5eed)
        let capacity = info.sectors * UInt64(info.sectorSize)
        var chunks: [(offset: UInt64, bytes: [UInt8])] = []
        var cursor: UInt64 = 0
        var total = 0
        while total < options.diskWriteBytes {
            let length = Int(rng.next() % 16 + 1) * 65536
            cursor += (rng.next() % 64) * 4096
            guard cursor + UInt64(length) <= capacity else { break }
            chunks.append((cursor, (0 ..< length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
            cursor += UInt64(length)
            total += length
        }
        chunks.shuffle(using: &rng)
        let writeStart = Date()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for chunk in chunks { group.addTask { try await driver.frontend.write(at: chunk.offset, chunk.bytes) } }
            try await group.waitForAll()
        }
        try await driver.frontend.flush()
        report.diskWriteSeconds = Date().timeIntervalSince(writeStart)
        let readStart = Date()
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for chunk in chunks {
                group.addTask { try await driver.frontend.read(at: chunk.offset, count: chunk.bytes.count) == chunk.bytes ? 0 : 1 }
            }
            return try await group.reduce(0, +)
        }
        report.diskReadSeconds = Date().timeIntervalSince(readStart)
        report.diskBytes = total
        report.diskMismatches = mismatches
        say(String(format: "Disk: wrote %d chunks (%d MiB) at random offsets and flushed at %.0f MiB/s; read back and verified at %.0f MiB/s",
                   chunks.count, total >> 20, report.diskWriteMiBps, report.diskReadMiBps))

        endpoint.requestClose()
        try await task.value
        try await XenbusToolstack.remove(vbd, on: host.store)
        sharer.close()
        say("Disk unplugged")
    }

    /// Sends `options.packets` frames and checks each echo; at most a ring's
    /// worth in flight, so the echo queue never overflows.
    private func exchangeFrames(port: PacketPort, mac: String) async throws -> (seconds: Double, mismatches: Int) {
        let size = max(60, min(options.packetSize, 65535))
        let source = try XenstoreValue.macAddress(mac, key: "mac")
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
        return (Date().timeIntervalSince(started), mismatches)
    }

    private func milliseconds(since date: Date) -> Int { Int(Date().timeIntervalSince(date) * 1000) }
}

/// Runs `body`, giving up after `seconds`: the demo never waits without a limit.
func withDeadline<T: Sendable>(seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DemoError("\(what) did not finish within \(Int(seconds)) s")
        }
        return value
    }
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

/// A small seeded generator, so the demo writes the same data every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
