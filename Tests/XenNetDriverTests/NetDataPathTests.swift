import CXen
import Foundation
import TestSupport
import Testing
import XenABI
import XenDriverRuntime
import XenHypervisor
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator

/// netfront and netback on the simulator, end to end through the rings,
/// grant copies and the event channel, with an in-memory attachment.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetDataPathTests {
    static let sizes = [60, 61, 1500, 4095, 4096, 4097, 9000, 32768, 65535]

    /// netfront's counters are atomics: another thread reads them while the pump writes
    /// them (ThreadSanitizer checks this in CI), and the pump's thread is gone after stop.
    @Test func frontendCountersAreReadFromAnotherThreadWhileThePumpRuns() async throws {
        let f = try NetFixture()
        let port = PacketPort()
        let pump = NetFrontPump(queue: try f.makeFrontend(), port: port, events: f.feEvents)
        try f.startBackend()
        pump.start()
        let counters = pump.counters
        let frames = 200
        // The reading thread is the test's own; it gives up after minimumDeadline.
        let counted = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            Thread {
                let deadline = ContinuousClock.now + .seconds(minimumDeadline)
                while counters.txPackets.value < UInt64(frames), ContinuousClock.now < deadline { sched_yield() }
                c.resume(returning: counters.txPackets.value >= UInt64(frames))
            }.start()
            Task {
                for i in 0..<frames { try await port.send(patternFrame(100, seed: UInt8(truncatingIfNeeded: i))) }
            }
        }
        #expect(counted, "\(counters.txPackets.value) of \(frames) frames counted")
        _ = await pump.stopped()
        #expect(pump.threadState == .joined)
        #expect(counters.txErrors.value == 0 && pump.failure == nil)
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func guestToAttachmentByteForByte() async throws {
        let f = try NetFixture()
        let fe = try f.makeFrontend()
        try f.startBackend()
        var expected: [[UInt8]] = []
        for (i, size) in Self.sizes.enumerated() {
            let frame = patternFrame(size, seed: UInt8(i))
            expected.append(frame)
            let sent = try await eventually(every: .milliseconds(1)) {
                let ok = try frame.withUnsafeBytes { try fe.send($0) }
                if !ok { try fe.collectTransmitCompletions(); try f.takeFrontendEvents() }
                return ok
            }
            #expect(sent)
        }
        #expect(try await eventually(every: .milliseconds(1)) {
            try fe.collectTransmitCompletions()
            return f.sentFrames().count == expected.count
        })
        #expect(f.sentFrames().map(\.bytes) == expected)
        #expect(f.vif.counters.txPackets.value == UInt64(expected.count))
        #expect(fe.counters.txErrors.value == 0)
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func gsoAndChecksumStateCrossToTheAttachment() async throws {
        let f = try NetFixture()
        let fe = try f.makeFrontend()
        try f.startBackend()
        let frame = patternFrame(20000, seed: 9)
        let gso = NetExtraInfo.gso(size: 1448, type: .tcpv4, features: 0)
        #expect(try frame.withUnsafeBytes { try fe.send($0, checksumBlank: true, gso: gso) })
        #expect(await eventually { f.sentFrames().count == 1 })
        let got = try #require(f.sentFrames().first)
        #expect(got.bytes == frame)
        #expect(got.offload == FrameOffload(checksumBlank: true, dataValidated: true, gso: gso))
        _ = try f.teardown()
    }

    @Test func attachmentToGuestByteForByte() async throws {
        let f = try NetFixture()
        let fe = try f.makeFrontend()
        try f.startBackend()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 64)
        defer { buffer.deallocate() }
        for (i, size) in Self.sizes.enumerated() {
            let frame = patternFrame(size, seed: UInt8(100 + i))
            let gso: NetExtraInfo? = size > 9000 ? .gso(size: 1448, type: .tcpv6, features: 0) : nil
            #expect(f.attachment.inject(frame, offload: FrameOffload(checksumBlank: gso != nil, dataValidated: true, gso: gso)))
            var got: (length: Int, checksumBlank: Bool, dataValidated: Bool, gso: NetExtraInfo?)?
            #expect(try await eventually(every: .milliseconds(1)) {
                got = try fe.receive(into: buffer)
                if got == nil { try f.takeFrontendEvents() }
                return got != nil
            })
            let packet = try #require(got)
            #expect(Array(buffer[0 ..< packet.length]) == frame, "frame of \(size) bytes")
            #expect(packet.gso == gso && packet.dataValidated && packet.checksumBlank == (gso != nil))
        }
        #expect(f.vif.counters.rxPackets.value == UInt64(Self.sizes.count))
        #expect(fe.counters.rxDropped.value == 0)
        let leftovers = try f.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func aGuestWithoutBuffersLosesFramesCountedNotQueued() async throws {
        let f = try NetFixture()
        // Initialise the rings by hand and post no rx buffer.
        var tx = try FrontRing<netif_tx_request, netif_tx_response>(initializing: f.txRing.memory)
        var rx = try FrontRing<netif_rx_request, netif_rx_response>(initializing: f.rxRing.memory)
        _ = tx.pushRequests()
        _ = rx.pushRequests()
        try f.startBackend()
        for i in 0 ..< 50 { f.attachment.inject(patternFrame(100, seed: UInt8(i))) }
        #expect(await eventually { f.vif.counters.rxDroppedNoBuffers.value == 50 })
        #expect(f.attachment.waiting == 0)
        #expect(f.vif.counters.rxPackets.value == 0)
        _ = try f.teardown()
    }

    @Test func guestGSOTypeItDidNotAskForIsRefused() async throws {
        let f = try NetFixture(receiveGSO: [])
        let fe = try f.makeFrontend()
        try f.startBackend()
        f.attachment.inject(patternFrame(3000, seed: 1), offload: FrameOffload(gso: .gso(size: 1000, type: .tcpv4, features: 0)))
        f.attachment.inject(patternFrame(100, seed: 2))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 64)
        defer { buffer.deallocate() }
        var length = 0
        #expect(try await eventually(every: .milliseconds(1)) {
            if let p = try fe.receive(into: buffer) { length = p.length; return true }
            try f.takeFrontendEvents()
            return false
        })
        #expect(length == 100)
        #expect(f.vif.counters.refused(.badGSO) == 1)
        _ = try f.teardown()
    }
}
