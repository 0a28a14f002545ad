import Foundation
import Logging
import Testing
import XenABI
import XenBus
import XenNetBack
import XenNetFront
import XenSimulator
import XenStore
import XenRing
import XenABI

/// netback and netfront find each other through xenstore, walk the XenBus
/// handshake and carry frames; unplug and removal leave nothing behind.
@Suite(.timeLimit(.minutes(2)), .serialized)
struct NetHandshakeTests {
    @Test func toolstackCreatesAVifAndBothEndsConnect() async throws {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 1024)
        let base = "/tmp/xpv-net-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        defer { server.stop() }
        let dom0Store = try XenStoreClient(socketPath: base + ".sock")
        let guestStore = try XenStoreClient(socketPath: base + "-g.sock")

        let attachment = MemoryAttachment { _, _ in true }
        let sent = SentFrames()
        let recording = MemoryAttachment { frame, offload in
            sent.frames.withLock { $0.append((Array(frame), offload)) }
            return true
        }
        _ = attachment
        let backend = NetBackend(hypervisor: hv.dom0, store: dom0Store, logger: quiet) { _, _ in recording }
        let backendTask = Task { try await backend.run() }
        defer { backendTask.cancel() }

        let device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        try await XenbusToolstack.create(device, on: dom0Store)

        let port = PacketPort()
        let frontend = NetFrontend(hypervisor: guest, store: guestStore, path: device.frontendPath, port: port, logger: quiet)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: frontend, logger: quiet)
        let frontendTask = Task { try await endpoint.run() }

        #expect(await eventually { endpoint.state == .connected && backend.vifs.first?.state == .connected })
        #expect(try await dom0Store.read(device.backendPath + "/feature-rx-copy") == "1")
        #expect(try await dom0Store.read(device.backendPath + "/hotplug-status") == "connected")

        // Guest to dom0 and back.
        let frame = patternFrame(3000, seed: 5)
        try await port.send(frame)
        #expect(await eventually { sent.frames.withLock { $0.count } == 1 })
        #expect(sent.frames.withLock { $0.first?.bytes } == frame)
        recording.inject(patternFrame(9000, seed: 6))
        var iterator = port.packets.makeAsyncIterator()
        let received = await iterator.next()
        #expect(received?.bytes == patternFrame(9000, seed: 6))

        // netback publishes its counters for `xenpv top`, once a second.
        let statsPath = DeviceStatistics.root(of: .dom0) + "/vif/\(guest.domainID.rawValue)/0"
        var published: [String: UInt64] = [:]
        let statsDeadline = Date().addingTimeInterval(10)
        while Date() < statsDeadline, (published["requests"] ?? 0) < 2 {
            published = DeviceStatistics.decode((try? await dom0Store.read(statsPath)) ?? "")
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(published["tx_packets"] == 1 && published["rx_packets"] == 1)
        #expect(published["ring_size"] == 256)

        // A frame netif cannot carry is refused at the call, clearly.
        await #expect(throws: NetFrontError.self) { try await port.send([1, 2, 3]) }

        // Unplug: the frontend closes, the backend lets go; removal ends both.
        endpoint.requestClose()
        try await frontendTask.value
        #expect(endpoint.state == .closed)
        try await XenbusToolstack.remove(device, on: dom0Store)
        #expect(await eventually { backend.vifs.isEmpty })
        let leftovers = hv.shutdown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}

@Suite(.timeLimit(.minutes(2)), .serialized)
struct NetNegotiationTests {
    @Test func aMalformedMacClosesThatVifWithItsReason() async throws {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 1024)
        let base = "/tmp/xpv-mac-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        defer { server.stop() }
        let dom0Store = try XenStoreClient(socketPath: base + ".sock")
        let guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        let backend = NetBackend(hypervisor: hv.dom0, store: dom0Store, logger: quiet) { _, _ in MemoryAttachment { _, _ in true } }
        let backendTask = Task { try await backend.run() }
        defer { backendTask.cancel() }
        let device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        try await XenbusToolstack.create(device, on: dom0Store, backendKeys: ["mac": "00:16:3e:zz:00:01"])
        let frontend = NetFrontend(hypervisor: guest, store: guestStore, path: device.frontendPath, port: PacketPort(), logger: quiet)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: frontend, logger: quiet)
        let frontendTask = Task { try await endpoint.run() }
        var error: String?
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, error == nil {
            error = try await dom0Store.readIfPresent(device.backendPath + "/error")
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect(error?.contains("mac is not a MAC address") == true)
        #expect(endpoint.state != .connected)
        endpoint.requestClose()
        try await frontendTask.value
    }

    @Test func aBrokenRingResetsThatVifAndItReconnects() async throws {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 2048)
        let base = "/tmp/xpv-reset-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        defer { server.stop() }
        let dom0Store = try XenStoreClient(socketPath: base + ".sock")
        let guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        let sent = SentFrames()
        let backend = NetBackend(hypervisor: hv.dom0, store: dom0Store, logger: quiet) { _, _ in
            MemoryAttachment { frame, offload in sent.frames.withLock { $0.append((Array(frame), offload)) }; return true }
        }
        let backendTask = Task { try await backend.run() }
        defer { backendTask.cancel() }
        let device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        try await XenbusToolstack.create(device, on: dom0Store)
        let port = PacketPort()
        let frontend = NetFrontend(hypervisor: guest, store: guestStore, path: device.frontendPath, port: port, logger: quiet)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: frontend, logger: quiet)
        let frontendTask = Task { try await endpoint.run() }
        #expect(await eventually { endpoint.state == .connected && backend.vifs.first?.state == .connected })
        let firstRing = try await guestStore.read(device.frontendPath + "/tx-ring-ref")

        // The guest scribbles on its tx ring's req_prod: a million entries ahead.
        let ref = GrantRef(UInt32(firstRing)!)
        let frame = FrameNumber(UInt64(guest.grantEntry(ref).pointee.frame))
        SharedRingHeader(guest.memory(of: frame)).requestProducer.store(1_000_000, ordering: .releasing)

        var error: String?
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, error == nil {
            error = try await dom0Store.readIfPresent(device.backendPath + "/error")
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect(error?.hasPrefix("ring: ") == true)
        // The device resets: a new session with new rings, and frames flow again.
        let deadline2 = Date().addingTimeInterval(20)
        var reconnected = false
        while Date() < deadline2, !reconnected {
            reconnected = try await guestStore.read(device.frontendPath + "/tx-ring-ref") != firstRing
                && endpoint.state == .connected && backend.vifs.first?.state == .connected
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect(reconnected)
        try await port.send(patternFrame(200, seed: 9))
        #expect(await eventually(10) { sent.frames.withLock { $0.count } == 1 })
        endpoint.requestClose()
        try await frontendTask.value
    }

    @Test func netfrontOffersOnlyWhatTheBackendTakes() {
        let gso4 = GuestOffload(checksumBlank: true, dataValidated: true, gso: .gso(size: 1448, type: .tcpv4, features: 0))
        let gso6 = GuestOffload(checksumBlank: true, dataValidated: true, gso: .gso(size: 1428, type: .tcpv6, features: 0))
        let plain = GuestOffload()
        let full = NetBackendFeatures(scatterGather: true, segmentation: [.tcpv4], checksumOffload: true)
        #expect(full.accepts(gso4) && !full.accepts(gso6) && full.accepts(plain))
        let noSG = NetBackendFeatures(scatterGather: false, segmentation: [.tcpv4], checksumOffload: true)
        #expect(!noSG.accepts(gso4))
        let noCsum = NetBackendFeatures(scatterGather: true, segmentation: [], checksumOffload: false)
        #expect(!noCsum.accepts(GuestOffload(checksumBlank: true)) && noCsum.accepts(plain))
    }
}

func eventually(_ seconds: Double = 10, _ body: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if body() { return true }
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return false
}
