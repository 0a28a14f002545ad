import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenSimulator
import XenStore
import XenStoreServer

/// A guest whose vif a `GuestSuspender` serves on `control/shutdown`, and netbacks that
/// echo every frame back: the source's, then a destination's with another queue count.
final class SuspendNetWorld: @unchecked Sendable {
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let server: XenStoreServer
    let dom0Store: XenStoreClient
    let guestStore: XenStoreClient
    let port: PacketPort
    let device: XenbusDevice
    let frontend: NetFrontendDriver
    let endpoint: XenbusEndpoint
    let suspender: GuestSuspender
    var backend: NetBackend
    private var backendTask: Task<Void, any Error>
    private var tasks: [Task<Void, any Error>] = []
    let quiet: Logger

    init(sourceQueues: Int, wanted: Int) async throws {
        port = PacketPort(queues: wanted)
        guest = try hv.createDomain(frames: 4096)
        let base = "/tmp/xpv-netsus-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        self.quiet = quiet
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        dom0Store = try XenStoreClient(socketPath: base + ".sock")
        guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        let control = XenStorePath.home(of: guest.domainID) + "/control"
        try await dom0Store.mkdir(control)
        try await dom0Store.setPermissions(control, XenStorePermissions(owner: guest.domainID))
        (backend, backendTask) = Self.echoBackend(hv: hv, store: dom0Store, maxQueues: sourceQueues, logger: quiet)
        device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.create(device, on: dom0Store)
        frontend = NetFrontendDriver(hypervisor: guest, store: guestStore, path: device.frontendPath, port: port,
                                     queues: wanted, logger: quiet)
        endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                  peerPath: device.backendPath, driver: frontend, logger: quiet)
        suspender = GuestSuspender(hypervisor: guest, devices: [endpoint], logger: quiet)
        let endpoint = self.endpoint, suspender = self.suspender
        let guestControl = GuestControl(store: guestStore, domain: guest.domainID)
        tasks.append(Task { try await endpoint.run() })
        tasks.append(Task { try await suspender.run(control: guestControl) })
    }

    /// A netback whose attachment sends every frame the guest sends straight back.
    static func echoBackend(hv: SimulatedHypervisor, store: XenStoreClient, maxQueues: Int, logger: Logger)
        -> (NetBackend, Task<Void, any Error>) {
        let backend = NetBackend(hypervisor: hv.dom0, store: store, logger: logger, maxQueues: maxQueues) { _, _ in
            let box = Locked<MemoryAttachment?>(nil)
            let attachment = MemoryAttachment(queues: maxQueues) { frame, _ in
                box.withLock { $0 }?.inject(Array(frame))
                return true
            }
            box.withLock { $0 = attachment }
            return attachment
        }
        return (backend, Task { try await backend.run() })
    }

    /// Both ends connected with `queues` queues.
    func connected(queues: Int) async -> Bool {
        await eventually(60) {
            endpoint.state == .connected && frontend.pumps.count == queues
                && backend.vifs.first?.state == .connected
        }
    }

    /// Sends `count` frames over `flows` flows and waits for every echo.
    func echo(_ count: Int, from: UInt32, packets: inout AsyncStream<PacketPort.Packet>.Iterator) async throws -> Bool {
        let port = self.port
        let frames = (0 ..< count).map { flowFrame(flow: 40000 + UInt16($0 % 4), sequence: from + UInt32($0)) }
        let sender = Task { for f in frames { try await port.send(f) } }
        var missing = Set((0 ..< count).map { from + UInt32($0) })
        let deadline = ContinuousClock.now + .seconds(60)
        while !missing.isEmpty, ContinuousClock.now < deadline {
            guard let p = await packets.next() else { break }
            if let (_, seq) = flowAndSequence(p.bytes) { missing.remove(seq) }
        }
        try await sender.value
        return missing.isEmpty
    }

    func requestSuspend() async throws {
        try await dom0Store.write(XenStorePath.home(of: guest.domainID) + "/" + GuestControl.shutdownKey, "suspend")
    }

    /// The source's netback goes, a destination's offering `queues` queues comes, the guest resumes.
    func migrate(toQueues queues: Int) async throws -> Leftovers {
        try await requestSuspend()
        #expect(await guest.waitForSuspend(timeout: .seconds(60)))
        backendTask.cancel()
        await backend.devices.cancel()
        (backend, backendTask) = Self.echoBackend(hv: hv, store: dom0Store, maxQueues: queues, logger: quiet)
        return try guest.finishSuspend(.resumed)
    }

    func teardown() async throws -> Leftovers {
        endpoint.requestClose()
        _ = try? await withTimeout(20) { [tasks] in _ = try? await tasks[0].value }
        try await XenbusToolstack.remove(device, on: dom0Store)
        _ = await eventually(20) { self.backend.vifs.isEmpty }
        backendTask.cancel()
        await backend.devices.cancel()
        for t in tasks { t.cancel() }
        // `stop()` waits for the store's loop thread to end: on a thread of its own.
        let server = server
        _ = await onThread { server.stop(timeout: minimumDeadline) }
        return hv.shutdown()
    }
}

@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetSuspendTests {
    /// A packet echo runs over two queues; the guest is suspended and resumed against a
    /// destination netback offering one queue: the vif reconnects with one queue, the
    /// echo goes on, and nothing the source held is left.
    @Test func theEchoGoesOnAfterAResumeWithAnotherQueueCount() async throws {
        let w = try await SuspendNetWorld(sourceQueues: 2, wanted: 2)
        #expect(await w.connected(queues: 2))
        var packets = w.port.packets.makeAsyncIterator()
        #expect(try await w.echo(64, from: 0, packets: &packets))
        let revoked = try await w.migrate(toQueues: 1)
        #expect(revoked.mappings.isEmpty, "\(revoked)")
        #expect(!revoked.grants.isEmpty)
        #expect(await w.connected(queues: 1))
        #expect(try await w.guestStore.read(w.device.frontendPath + "/multi-queue-num-queues") == "1")
        #expect(try await w.echo(64, from: 1000, packets: &packets))
        #expect(w.frontend.pumps.allSatisfy { $0.failure == nil })
        let leftovers = try await w.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// Resumed against a destination offering as many queues, the vif grants the same
    /// rings and buffer pages again (nothing new to allocate and zero while the guest is
    /// down) and the echo goes on; nothing is left at the end.
    @Test func aResumeWithTheSameQueuesGrantsTheSamePagesAgain() async throws {
        let w = try await SuspendNetWorld(sourceQueues: 2, wanted: 2)
        #expect(await w.connected(queues: 2))
        var packets = w.port.packets.makeAsyncIterator()
        #expect(try await w.echo(64, from: 0, packets: &packets))
        let before = w.frontend.sharedPages.map { $0.map(\.memory) }
        #expect(before.count == 2)
        // The last transmit buffer of each queue (no frame of this test reaches it) marked:
        // new pages would come zeroed.
        for q in before { q[2].page(q[2].count - 1).storeBytes(of: 0x5EED_F00D, as: UInt32.self) }
        _ = try await w.migrate(toQueues: 2)
        #expect(await w.connected(queues: 2))
        #expect(w.frontend.sharedPages.map { $0.map(\.memory) } == before)
        for q in before { #expect(q[2].page(q[2].count - 1).load(as: UInt32.self) == 0x5EED_F00D) }
        #expect(try await w.echo(64, from: 1000, packets: &packets))
        #expect(w.frontend.pumps.allSatisfy { $0.failure == nil })
        let leftovers = try await w.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// A cancelled suspend: the same rings, new pumps, the echo goes on.
    @Test func aCancelledSuspendGoesOnWithTheSameRings() async throws {
        let w = try await SuspendNetWorld(sourceQueues: 2, wanted: 2)
        #expect(await w.connected(queues: 2))
        var packets = w.port.packets.makeAsyncIterator()
        #expect(try await w.echo(32, from: 0, packets: &packets))
        let before = w.frontend.pumps
        try await w.requestSuspend()
        #expect(await w.guest.waitForSuspend(timeout: .seconds(60)))
        #expect(before.allSatisfy { $0.threadState == .joined })
        try w.guest.finishSuspend(.cancelled)
        #expect(await eventually(60) { w.frontend.pumps.allSatisfy { $0.threadState == .running } })
        #expect(w.frontend.pumps.count == 2)
        #expect(try await w.echo(32, from: 1000, packets: &packets))
        let leftovers = try await w.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}
