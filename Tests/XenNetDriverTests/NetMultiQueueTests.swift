import Foundation
import TestSupport
import Testing
import XenABI
import XenBus
import XenDriverRuntime
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenStore

/// A UDP/IPv4 frame of flow `flow` (its source port) carrying `sequence` in its payload.
func flowFrame(flow: UInt16, sequence: UInt32, length: Int = 128) -> [UInt8] {
    var f = [UInt8](repeating: 0, count: max(length, 14 + 20 + 8 + 4))
    f[0 ..< 6] = [0x00, 0x16, 0x3e, 0, 0, 2]
    f[6 ..< 12] = [0x00, 0x16, 0x3e, 0, 0, 1]
    f[12] = 0x08; f[13] = 0x00
    f[14] = 0x45; f[23] = 17
    f[26 ..< 30] = [10, 0, 0, 1]
    f[30 ..< 34] = [10, 0, 0, 2]
    f[34] = UInt8(flow >> 8); f[35] = UInt8(flow & 0xff)
    f[36] = 0x13; f[37] = 0x89
    for i in 0 ..< 4 { f[42 + i] = UInt8(truncatingIfNeeded: sequence >> (8 * UInt32(i))) }
    return f
}

/// The flow (source port) and sequence number of a frame made by `flowFrame`.
func flowAndSequence(_ f: [UInt8]) -> (flow: UInt16, sequence: UInt32)? {
    guard f.count >= 46 else { return nil }
    let seq = (0 ..< 4).reduce(UInt32(0)) { $0 | UInt32(f[42 + $1]) << (8 * UInt32($1)) }
    return (UInt16(f[34]) << 8 | UInt16(f[35]), seq)
}

/// Flows (source ports) of which at least two hash to each of 2 queues.
func flowsOverTwoQueues() -> [UInt16] {
    var picked: [UInt16] = []
    var perQueue = [0, 0]
    var port: UInt16 = 40000
    while perQueue.min()! < 2 {
        let q = flowFrame(flow: port, sequence: 0).withUnsafeBytes { FlowHash.queue(of: $0, among: 2) }
        if perQueue[q] < 2 { picked.append(port); perQueue[q] += 1 }
        port += 1
    }
    return picked
}

/// Multi-queue negotiation as io/netif.h lays it out, over the store: the backend's offer,
/// the frontend's choice, the keys per queue, a queue (ring pair, thread) each side.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetMultiQueueNegotiationTests {
    /// Waits for both ends, returns the backend's device driver's queues.
    private func connectedQueues(_ w: NetStoreWorld) async throws -> [VifQueue] {
        #expect(await w.bothConnected())
        let device = try #require(w.backend.devices.entries.first?.driver)
        return device.queues
    }

    private func teardown(_ w: NetStoreWorld, _ queues: [VifQueue]) async throws {
        w.endpoint.requestClose()
        try await w.frontendTask.value
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        // Every queue's thread is gone and nothing is left mapped, granted or bound.
        #expect(queues.allSatisfy { $0.threadState == .joined })
        let leftovers = w.hv.shutdown()
        #expect(leftovers.isEmpty, "\(leftovers)")
        try await w.close()
    }

    @Test func oneQueueKeepsTheTopLevelKeys() async throws {
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 4, queues: 1)
        let queues = try await connectedQueues(w)
        #expect(queues.count == 1)
        let fe = w.device.frontendPath
        #expect(try await w.dom0Store.read(w.device.backendPath + "/multi-queue-max-queues") == "4")
        #expect(try await w.guestStore.read(fe + "/multi-queue-num-queues") == "1")
        #expect(try await w.guestStore.readIfPresent(fe + "/tx-ring-ref") != nil)
        #expect(try await w.guestStore.readIfPresent(fe + "/event-channel") != nil)
        #expect(try await w.guestStore.readIfPresent(fe + "/queue-0/tx-ring-ref") == nil)
        try await teardown(w, queues)
    }

    @Test func twoQueuesWriteTheirKeysUnderQueueN() async throws {
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 4, queues: 2)
        let queues = try await connectedQueues(w)
        #expect(queues.count == 2)
        let fe = w.device.frontendPath
        #expect(try await w.guestStore.read(fe + "/multi-queue-num-queues") == "2")
        for q in 0 ..< 2 {
            for key in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
                #expect(try await w.guestStore.readIfPresent("\(fe)/queue-\(q)/\(key)") != nil, "queue-\(q)/\(key)")
            }
        }
        // netif.h: several queues must not write the top-level ring keys.
        for key in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
            #expect(try await w.guestStore.readIfPresent(fe + "/" + key) == nil, "\(key)")
        }
        // Two ring pairs, two ports, each queue its own thread.
        #expect(Set(queues.map(\.configuration.txPort)).count == 2)
        #expect(queues.allSatisfy { $0.threadState == .running })
        #expect(w.frontend.queueCounters.count == 2)
        try await teardown(w, queues)
    }

    @Test func theFrontendTakesNoMoreThanTheBackendOffers() async throws {
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 3, queues: 8)
        let queues = try await connectedQueues(w)
        #expect(queues.count == 3)
        #expect(try await w.guestStore.read(w.device.frontendPath + "/multi-queue-num-queues") == "3")
        try await teardown(w, queues)

        // A backend offering one: one queue, top-level keys.
        let one = try await NetStoreWorld(frames: 4096, maxQueues: 1, queues: 2)
        let single = try await connectedQueues(one)
        #expect(single.count == 1)
        #expect(try await one.guestStore.readIfPresent(one.device.frontendPath + "/tx-ring-ref") != nil)
        // Its attachment has two receive queues, the vif one: every flow still arrives.
        let flows = flowsOverTwoQueues()
        var packets = one.port.packets.makeAsyncIterator()
        for flow in flows { #expect(one.attachment.inject(flowFrame(flow: flow, sequence: 1))) }
        var arrived: Set<UInt16> = []
        for _ in flows { if let p = await packets.next(), let f = flowAndSequence(p.bytes) { arrived.insert(f.flow) } }
        #expect(arrived == Set(flows))
        try await teardown(one, single)
    }

    @Test func theOfferIsBounded() async throws {
        #expect((1 ... NetBackendDevice.queueLimit).contains(NetBackendDevice.defaultMaxQueues))
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 1000, queues: 1)
        let queues = try await connectedQueues(w)
        #expect(try await w.dom0Store.read(w.device.backendPath + "/multi-queue-max-queues") == "\(NetBackendDevice.queueLimit)")
        try await teardown(w, queues)
    }

    /// A frontend that writes hostile multi-queue keys after its real ones: the backend
    /// refuses that vif with the key and reason in its `error` node, maps and binds nothing
    /// that outlives the refusal, and the guest's teardown leaves nothing.
    @Test(arguments: [
        ("num-queues 0", "multi-queue-num-queues", "0", "multi-queue-num-queues = \"0\" (outOfRange): expected a decimal in 1...2"),
        ("num-queues above the offer", "multi-queue-num-queues", "3",
         "multi-queue-num-queues = \"3\" (outOfRange): expected a decimal in 1...2"),
        ("num-queues garbage", "multi-queue-num-queues", "two", "multi-queue-num-queues = \"two\" (malformed)"),
        ("a missing queue key", "queue-1/tx-ring-ref", nil, "queue-1/tx-ring-ref is missing"),
        ("a garbage ring ref", "queue-1/rx-ring-ref", "0xzz", "queue-1/rx-ring-ref = \"0xzz\" (malformed)"),
        ("a garbage event channel", "queue-1/event-channel", "-1", "queue-1/event-channel = \"-1\""),
        // Parses, but is no port of the guest's: queue 0 was mapped and bound by then.
        ("an unbound event channel", "queue-1/event-channel", "4000", "queue 1: bind interdomain"),
        ("a ring ref not granted", "queue-1/tx-ring-ref", "57005", "queue 1: map entry 0 of 1: gref:57005"),
    ] as [(String, String, String?, String)])
    func aHostileQueueKeyIsRefusedAndLeavesNothing(_ name: String, key: String, value: String?, expected: String) async throws {
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 2, queues: 2, afterPrepare: { store, device in
            let path = device.frontendPath + "/" + key
            if let value { try await store.write(path, value) } else { try await store.rm(path) }
        })
        let error = try #require(try await w.backendError(within: 30), "\(name): no error")
        #expect(error.contains(expected), "\(name): \(error)")
        #expect(await eventually(30) { w.endpoint.state == .closed && w.backend.vifs.first?.state == .closing })
        #expect(w.backend.devices.entries.first?.driver.queues.isEmpty == true, "\(name)")
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        let leftovers = w.hv.shutdown()
        #expect(leftovers.isEmpty, "\(name): \(leftovers)")
        try await w.close()
    }
}

/// Frames over two queues: each flow keeps one queue and its order, both ways, and both
/// queues carry flows.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetMultiQueueTrafficTests {
    @Test func flowsSpreadOverTwoQueuesEachInOrderBothWays() async throws {
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 2, queues: 2)
        #expect(await w.bothConnected())
        let device = try #require(w.backend.devices.entries.first?.driver)
        let queues = device.queues
        try #require(queues.count == 2)
        let flows = flowsOverTwoQueues()
        let perFlow = 300

        // Guest to dom0: interleaved flows, sent from one task (one order per flow).
        for seq in 0 ..< perFlow {
            for flow in flows { try await w.port.send(flowFrame(flow: flow, sequence: UInt32(seq))) }
        }
        let total = flows.count * perFlow
        #expect(await eventually(60) { w.sent.frames.withLock { $0.count } == total })
        var next: [UInt16: UInt32] = [:]
        var outOfOrder = 0
        for frame in w.sent.frames.withLock({ $0.map(\.bytes) }) {
            guard let (flow, seq) = flowAndSequence(frame) else { outOfOrder += 1; continue }
            if seq != next[flow, default: 0] { outOfOrder += 1 }
            next[flow] = seq + 1
        }
        #expect(outOfOrder == 0)
        // Both queues transmitted, and each flow's frames all through the one its hash picks.
        #expect(queues.allSatisfy { $0.counters.txPackets.value > 0 }, "\(queues.map { $0.counters.txPackets.value })")
        #expect(queues.map { $0.counters.txPackets.value }.reduce(0, +) == UInt64(total))

        // dom0 to guest: the attachment queues each frame on its flow's queue.
        var packets = w.port.packets.makeAsyncIterator()
        var received: [[UInt8]] = []
        for seq in 0 ..< perFlow {
            for flow in flows { #expect(w.attachment.inject(flowFrame(flow: flow, sequence: UInt32(seq)))) }
            // Drain as we go: the port holds a bounded number of unread frames.
            while received.count < (seq + 1) * flows.count - 64, let p = await packets.next() { received.append(p.bytes) }
        }
        while received.count < total, let p = await packets.next() { received.append(p.bytes) }
        next = [:]
        outOfOrder = 0
        for frame in received {
            guard let (flow, seq) = flowAndSequence(frame) else { outOfOrder += 1; continue }
            if seq != next[flow, default: 0] { outOfOrder += 1 }
            next[flow] = seq + 1
        }
        #expect(received.count == total && outOfOrder == 0)
        #expect(queues.allSatisfy { $0.counters.rxPackets.value > 0 }, "\(queues.map { $0.counters.rxPackets.value })")
        #expect(w.frontend.queueCounters.allSatisfy { $0.rxPackets.value > 0 && $0.txPackets.value > 0 })

        w.endpoint.requestClose()
        try await w.frontendTask.value
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        #expect(queues.allSatisfy { $0.threadState == .joined })
        let leftovers = w.hv.shutdown()
        #expect(leftovers.isEmpty, "\(leftovers)")
        try await w.close()
    }

    /// An attachment with one receive queue on a two-queue vif: both queues transmit, only
    /// the first receives, so received frames keep one order.
    @Test func anAttachmentWithOneReceiveQueueIsReadByTheFirstQueueOnly() async throws {
        let single = MemoryAttachment { _, _ in true }
        let w = try await NetStoreWorld(frames: 4096, maxQueues: 2, queues: 2, attach: { _, _ in { @Sendable _, _ in single } })
        #expect(await w.bothConnected())
        let queues = try #require(w.backend.devices.entries.first?.driver).queues
        try #require(queues.count == 2)
        #expect(queues.map(\.configuration.receives) == [true, false])
        var packets = w.port.packets.makeAsyncIterator()
        for seq in 0 ..< 200 { single.inject(flowFrame(flow: UInt16(40000 + seq % 7), sequence: UInt32(seq))) }
        for seq in 0 ..< 200 {
            let p = await packets.next()
            #expect(p.flatMap { flowAndSequence($0.bytes) }?.sequence == UInt32(seq))
        }
        #expect(queues[1].counters.rxPackets.value == 0)
        w.endpoint.requestClose()
        try await w.frontendTask.value
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        #expect(w.hv.shutdown().isEmpty)
        try await w.close()
    }
}
