import Atomics
import CXen
import Foundation
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator

/// What `xenpv bench net` measures.
public struct NetBenchmarkConfiguration: Sendable {
    /// Which way frames flow.
    public enum Direction: String, Sendable, CaseIterable {
        /// Guest to dom0: netfront transmits, netback hands frames to a sink.
        case tx
        /// Dom0 to guest: a source hands frames to netback, netfront receives.
        case rx
    }
    /// Bytes per frame, from `Netif.minimumPacketSize` to `Netif.maxPacketSize`; above 1514 frames go as TCP GSO.
    public var packetSize = 64
    /// How long to send, in seconds.
    public var seconds = 3.0
    /// Which way frames flow.
    public var direction = Direction.tx
    /// CPUs to pin the frontend and backend threads to (nil: not pinned).
    public var frontCPU: Int32? = 0
    /// The CPU the backend thread is pinned to (nil: not pinned).
    public var backCPU: Int32? = 1

    /// 64-byte frames, guest to dom0, for 3 s, the frontend on CPU 0 and the backend on CPU 1.
    public init() {}
}

/// What it measured.
public struct NetBenchmarkResult: Sendable {
    /// The configuration of the run.
    public var configuration: NetBenchmarkConfiguration
    /// Frames that arrived: counted at the sink for `tx`, at netfront for `rx`.
    public var packets: UInt64
    /// Wall-clock seconds the run took.
    public var seconds: Double
    /// Event-channel notifications sent by both sides.
    public var notifies: UInt64
    /// Times the backend thread slept on its event channel.
    public var backendSleeps: UInt64

    /// Frames per second.
    public var packetsPerSecond: Double { Double(packets) / seconds }
    /// Frame bytes per second in Gbit/s (10^9 bits).
    public var gigabitsPerSecond: Double { Double(packets) * Double(configuration.packetSize) * 8 / seconds / 1e9 }

    /// One JSON object with the configuration, the rates, and notifications and sleeps per frame.
    public var json: String {
        String(format: """
            {"direction":"%@","packet_size":%d,"packets":%llu,"seconds":%.3f,"packets_per_second":%.0f,\
            "gbit_per_second":%.3f,"ns_per_packet":%.1f,"notifies_per_packet":%.4f,"backend_sleeps_per_packet":%.4f}
            """, configuration.direction.rawValue, configuration.packetSize, packets, seconds, packetsPerSecond,
                      gigabitsPerSecond, seconds * 1e9 / Double(max(packets, 1)), Double(notifies) / Double(max(packets, 1)),
                      Double(backendSleeps) / Double(max(packets, 1)))
    }

    /// One line for a person.
    public var summary: String {
        String(format: "%@ %d-byte frames: %.0f frames/s, %.2f Gbit/s, %.1f ns/frame, %.3f notifies/frame (%llu frames in %.2f s)",
               configuration.direction.rawValue, configuration.packetSize, packetsPerSecond, gigabitsPerSecond,
               seconds * 1e9 / Double(max(packets, 1)), Double(notifies) / Double(max(packets, 1)), packets, seconds)
    }
}

/// An attachment that swallows every frame it is given (counting them) and,
/// for the rx direction, always has one more frame of the configured size.
final class CountingAttachment: NetworkAttachment, @unchecked Sendable {
    // @unchecked: only the vif thread calls in; counters are atomics.
    let sent = ManagedAtomic<UInt64>(0)
    let frame: [UInt8]
    let offload: FrameOffload
    let source: Bool

    init(frameSize: Int, source: Bool) {
        frame = (0 ..< frameSize).map { UInt8(truncatingIfNeeded: $0) }
        offload = frameSize > 1514 ? FrameOffload(checksumBlank: true, dataValidated: true,
                                                  gso: .gso(size: 1448, type: .tcpv4, features: 0)) : .none
        self.source = source
    }

    var fileDescriptor: FileDescriptor? { nil }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        guard source else { return nil }
        frame.withUnsafeBytes { buffer.copyMemory(from: $0) }
        return (0 ..< frame.count, offload)
    }

    func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
        sent.wrappingIncrement(ordering: .relaxed)
        return true
    }
}

/// Frames through the netif ring pair between two simulated domains: the
/// data path of netfront and netback without a network stack on either end.
public enum NetBenchmark {
    /// Runs one measurement: sets up a frontend and a backend on two simulated domains, drives the frontend on the calling thread (pinned to `frontCPU`, and left pinned) for `seconds`, and tears everything down. Throws for a frame size out of range or a failure of set-up or the drivers.
    public static func run(_ configuration: NetBenchmarkConfiguration) throws -> NetBenchmarkResult {
        let size = configuration.packetSize
        guard size >= Netif.minimumPacketSize, size <= Netif.maxPacketSize else {
            throw NetFrontError(.badFrameSize, "--packet-size must be \(Netif.minimumPacketSize) to \(Netif.maxPacketSize)")
        }
        let pair = try NetRingPair()
        let queue = try pair.makeFrontend()
        let attachment = CountingAttachment(frameSize: size, source: configuration.direction == .rx)
        let vif = try pair.makeBackend(attachment: attachment, cpu: configuration.backCPU)
        vif.start()
        defer {
            vif.stop()
            pair.close()
        }
        let feEvents = pair.feEvents

        // The frontend runs on this thread, pinned like the C reference's.
        if let cpu = configuration.frontCPU { _ = cxen_pin_to_cpu(cpu) }
        let frame = (0 ..< size).map { UInt8(truncatingIfNeeded: $0 &* 3) }
        let gso: NetExtraInfo? = size > 1514 ? .gso(size: 1448, type: .tcpv4, features: 0) : nil
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Netif.minimumSlotsPerPacket * 4096, alignment: 64)
        defer { buffer.deallocate() }
        var packets: UInt64 = 0
        let start = Date()
        let deadline = start.addingTimeInterval(configuration.seconds)
        var iterations = 0
        try frame.withUnsafeBytes { bytes in
            while true {
                iterations &+= 1
                if iterations & 255 == 0, Date() >= deadline { break }
                var worked = try queue.collectTransmitCompletions() > 0
                switch configuration.direction {
                case .tx:
                    while try queue.send(bytes, checksumBlank: gso != nil, gso: gso) {
                        packets &+= 1
                        worked = true
                    }
                case .rx:
                    while try queue.receive(into: buffer) != nil {
                        packets &+= 1
                        worked = true
                    }
                }
                if worked { continue }
                // Spin briefly, then sleep on the event channel (bounded).
                var spins = 0
                while spins < 2000, !(try queue.prepareToSleep()) { spins += 1; cxen_cpu_relax() }
                if spins == 2000 {
                    _ = try feEvents.wait(timeoutMilliseconds: 10)
                    while let p = try feEvents.pending() { try feEvents.unmask(p) }
                }
            }
        }
        let seconds = Date().timeIntervalSince(start)
        let counted = configuration.direction == .tx ? attachment.sent.load(ordering: .relaxed) : packets
        return NetBenchmarkResult(configuration: configuration, packets: counted, seconds: seconds,
                                  notifies: queue.counters.notifies.value + vif.counters.notifies.value,
                                  backendSleeps: vif.counters.sleeps.value)
    }
}
