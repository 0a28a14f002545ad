import DriverTestSupport
import Foundation
import Logging
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenNetBack
import XenNetFront
import XenNetProtocol
import XenRing
import XenSimulator
import XenStore
import XenStoreServer

/// A simulated host with xenstored and netback (which records the frames it
/// is sent), a guest whose vif 0 the toolstack plugs, and the guest's netfront
/// walking the handshake through its own store connection.
final class NetStoreWorld: @unchecked Sendable {
    // @unchecked: immutable after init; the tasks are only cancelled in close().
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let server: XenStoreServer
    let dom0Store: XenStoreClient
    let guestStore: XenStoreClient
    let sent = SentFrames()
    let attachment: MemoryAttachment
    let backend: NetBackend
    let device: XenbusDevice
    let port: PacketPort
    let frontend: NetFrontendDriver
    let endpoint: XenbusEndpoint
    let frontendTask: Task<Void, Error>
    private let backendTask: Task<Void, Error>

    /// `hostileGuest` runs on the guest's store connection before its netfront starts.
    /// `attach`, given dom0's store and id, makes netback's factory (default: the memory
    /// attachment recording `sent`, with `queues` receive queues); `guestPort` is netfront's
    /// port (default: `port`, a `PacketPort` of `queues` queues). netback offers `maxQueues`,
    /// netfront wishes for `queues`; `afterPrepare` runs in the transaction in which
    /// netfront writes its keys and says Initialised, after its writes (a hostile frontend's edits).
    /// `frontendHypervisor` wraps the guest's hypervisor for netfront.
    init(frames: Int = 1024, backendKeys: [String: String] = [:], backendLog: LogLines? = nil,
         maxQueues: Int = 1, queues: Int = 1,
         hostileGuest: (@Sendable (XenStoreClient, XenbusDevice) async throws -> Void)? = nil,
         afterPrepare: (@Sendable (any XenStoreOperations, XenbusDevice) async throws -> Void)? = nil,
         attach: ((XenStoreClient, DomainID) -> AttachmentFactory)? = nil, guestPort: (any GuestPort)? = nil,
         frontendHypervisor: ((any Hypervisor) -> any Hypervisor)? = nil) async throws {
        port = PacketPort(queues: queues)
        guest = try hv.createDomain(frames: frames)
        let base = "/tmp/xpv-net-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        dom0Store = try XenStoreClient(socketPath: base + ".sock")
        guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        let sent = self.sent
        let attachment = MemoryAttachment(queues: queues) { frame, offload in
            sent.frames.withLock { $0.append((Array(frame), offload)) }
            return true
        }
        self.attachment = attachment
        var backendLogger = quiet
        if let backendLog { backendLogger = Logger(label: "netback") { _ in backendLog } }
        let backend = NetBackend(hypervisor: hv.dom0, store: dom0Store, logger: backendLogger, maxQueues: maxQueues,
                                 attach: attach?(dom0Store, hv.dom0.domainID) ?? { @Sendable _, _ in attachment })
        self.backend = backend
        backendTask = Task { try await backend.run() }
        device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        try await XenbusToolstack.create(device, on: dom0Store, backendKeys: backendKeys)
        try await hostileGuest?(guestStore, device)
        let frontend = NetFrontendDriver(hypervisor: frontendHypervisor?(guest) ?? guest, store: guestStore, path: device.frontendPath, port: guestPort ?? port,
                                         queues: queues, logger: quiet)
        self.frontend = frontend
        let driver: any XenbusDeviceDriver = afterPrepare.map { [device] edit in
            EditingFrontend(frontend) { tx in try await edit(tx, device) }
        } ?? frontend
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: driver, logger: quiet)
        self.endpoint = endpoint
        frontendTask = Task { try await endpoint.run() }
    }

    /// Both ends of the vif say Connected.
    var connected: Bool { endpoint.state == .connected && backend.vifs.first?.state == .connected }

    /// Waits until both ends say Connected. The frontend publishes it only after it saw
    /// the backend's, so by then netback runs an endpoint for the vif.
    func bothConnected() async -> Bool {
        guard (try? await endpoint.connected(timeout: .seconds(60))) != nil,
              let backendEndpoint = backend.endpoint(for: VifIdentity(frontend: guest.domainID, id: 0)) else { return false }
        return (try? await backendEndpoint.connected(timeout: .seconds(60))) != nil
    }

    /// The backend's `error` key, polled for at most `seconds` (see `eventually`).
    func backendError(within seconds: Double) async throws -> String? {
        var error: String?
        _ = try await eventually(seconds, every: .milliseconds(20)) {
            error = try await dom0Store.readIfPresent(device.backendPath + "/error")
            return error != nil
        }
        return error
    }

    /// Unplugs from the guest's side and stops everything.
    func close() async throws {
        endpoint.requestClose()
        try await frontendTask.value
        backendTask.cancel()
        // `stop()` waits for the store's loop thread to end: on a thread of its own.
        let server = server
        _ = await onThread { server.stop(timeout: minimumDeadline) }
    }
}

/// netfront, with `edit` run after its keys are written, in the same transaction: a
/// frontend that writes hostile values where a real one writes good ones.
final class EditingFrontend: XenbusDeviceDriver {
    let inner: NetFrontendDriver
    let edit: @Sendable (any XenStoreOperations) async throws -> Void
    init(_ inner: NetFrontendDriver, edit: @escaping @Sendable (any XenStoreOperations) async throws -> Void) {
        self.inner = inner
        self.edit = edit
    }
    func prepare() async throws -> XenbusWrites {
        let writes = try await inner.prepare()
        return XenbusWrites { [edit] tx in
            try await writes.apply(to: tx)
            try await edit(tx)
        }
    }
    func connect() async throws { try await inner.connect() }
    func disconnect() async { await inner.disconnect() }
}

/// netback and netfront find each other through xenstore, walk the XenBus
/// handshake and carry frames; unplug and removal leave nothing behind.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetHandshakeTests {
    /// netback's connect maps rings and binds ports (blocking calls) off the cooperative
    /// pool: as many vifs as the pool has threads connect while their attachments hold each
    /// connect, and this test must run meanwhile to let them go (blkback's: BlockXenbusTests).
    @Test func connectsThatBlockHoldNoThreadOfThePool() async throws {
        let gate = BlockingGate()
        try await connectWhileHeld(by: gate) {
            try await NetStoreWorld(attach: { _, _ in { @Sendable _, _ in GatedAttachment(gate) } })
        }
    }

    /// netfront's prepare shares pages and allocates ports (blocking calls) off the pool too:
    /// as many vifs as the pool has threads prepare while their port allocation is held.
    @Test func preparesThatBlockHoldNoThreadOfThePool() async throws {
        let gate = BlockingGate()
        try await connectWhileHeld(by: gate) { try await NetStoreWorld(frontendHypervisor: { GatedHypervisor($0, gate: gate) }) }
    }

    /// As many vifs as the pool has threads, made by `world`, reach `gate`; this test, still
    /// running, opens it; each vif then connects, and none waited for the gate to give up.
    private func connectWhileHeld(by gate: BlockingGate, _ world: () async throws -> NetStoreWorld) async throws {
        var worlds: [NetStoreWorld] = []
        for _ in 0..<BlockingGate.poolThreads { worlds.append(try await world()) }
        #expect(await eventually { gate.waiting >= BlockingGate.poolThreads })
        gate.open()
        for w in worlds {
            #expect(await w.bothConnected())
            try await w.close()
        }
        #expect(!gate.timedOut, "the blocking calls held the pool until their gate gave up")
    }

    @Test func toolstackCreatesAVifAndBothEndsConnect() async throws {
        let w = try await NetStoreWorld()
        #expect(await w.bothConnected())
        #expect(try await w.dom0Store.read(w.device.backendPath + "/feature-rx-copy") == "1")
        #expect(try await w.dom0Store.read(w.device.backendPath + "/hotplug-status") == "connected")

        // Guest to dom0 and back.
        let frame = patternFrame(3000, seed: 5)
        try await w.port.send(frame)
        #expect(await eventually { w.sent.frames.withLock { $0.count } == 1 })
        #expect(w.sent.frames.withLock { $0.first?.bytes } == frame)
        w.attachment.inject(patternFrame(9000, seed: 6))
        var iterator = w.port.packets.makeAsyncIterator()
        let received = await iterator.next()
        #expect(received?.bytes == patternFrame(9000, seed: 6))

        // netback publishes its counters for `xenpv top`, once a second.
        let statsPath = DeviceStatistics.root(of: .dom0) + "/vif/\(w.guest.domainID.rawValue)/0"
        var published: [String: UInt64] = [:]
        _ = await eventually(10, every: .milliseconds(50)) {
            published = DeviceStatistics.decode((try? await w.dom0Store.read(statsPath)) ?? "")
            return (published["requests"] ?? 0) >= 2
        }
        #expect(published["tx_packets"] == 1 && published["rx_packets"] == 1)
        #expect(published["ring_size"] == 256)

        // A frame netif cannot carry is refused at the call, clearly.
        await #expect(throws: NetFrontError.self) { try await w.port.send([1, 2, 3]) }

        // Unplug: the frontend closes, the backend lets go; removal ends both.
        w.endpoint.requestClose()
        try await w.frontendTask.value
        #expect(w.endpoint.state == .closed)
        try await XenbusToolstack.remove(w.device, on: w.dom0Store)
        #expect(await eventually { w.backend.vifs.isEmpty })
        let leftovers = w.hv.shutdown()
        #expect(leftovers.isEmpty, "\(leftovers)")
        try await w.close()
    }
}

@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetNegotiationTests {
    @Test func aMalformedMacClosesThatVifWithItsReason() async throws {
        let w = try await NetStoreWorld(backendKeys: ["mac": "00:16:3e:zz:00:01"])
        let error = try await w.backendError(within: 10)
        #expect(error?.contains("/mac = \"00:16:3e:zz:00:01\" (malformed): expected a MAC address") == true, "\(error ?? "nil")")
        #expect(w.endpoint.state != .connected)
        try await w.close()
    }

    /// A guest's multi-queue-num-queues = 2^64-1 once made netback trap; then, refused,
    /// it made netback and netfront loop. Now that vif gets the reason, its backend holds
    /// Closing with the connect tried once, and a second vif of the guest still carries frames.
    @Test func aHugeQueueCountClosesThatVifOnceAndAnotherVifKeepsWorking() async throws {
        let log = LogLines()
        let w = try await NetStoreWorld(backendLog: log, afterPrepare: { guestStore, device in
            try await guestStore.write(device.frontendPath + "/" + XenbusKey.multiQueueNumQueues, "18446744073709551615")
        })
        let error = try await w.backendError(within: 20)
        #expect(error?.contains("multi-queue-num-queues = \"18446744073709551615\" (outOfRange): expected a decimal in 1...1") == true,
                "\(error ?? "nil")")
        // Settled: the backend holds Closing, netfront closed and does not start over.
        #expect(await eventually(20) { w.endpoint.state == .closed && w.backend.vifs.first?.state == .closing })

        // A second vif of the same guest connects and carries a frame both ways.
        let second = XenbusDevice(type: "vif", id: 1, frontend: w.guest.domainID)
        try await XenbusToolstack.create(second, on: w.dom0Store)
        let port = PacketPort()
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let nic = NetFrontendDriver(hypervisor: w.guest, store: w.guestStore, path: second.frontendPath, port: port, logger: quiet)
        let endpoint = XenbusEndpoint(role: .frontend, store: w.guestStore, path: second.frontendPath,
                                      peerPath: second.backendPath, driver: nic, logger: quiet)
        let run = Task { try await endpoint.run() }
        try await endpoint.connected(timeout: .seconds(60))
        try await #require(w.backend.endpoint(for: VifIdentity(frontend: w.guest.domainID, id: 1))).connected(timeout: .seconds(60))
        try await port.send(patternFrame(300, seed: 3))
        #expect(await eventually(10) { w.sent.frames.withLock { $0.count } == 1 })
        w.attachment.inject(patternFrame(400, seed: 4))
        var packets = port.packets.makeAsyncIterator()
        #expect(await packets.next()?.bytes == patternFrame(400, seed: 4))

        // One attempt, counted after everything above happened (no timing involved).
        #expect(log.count(containing: "connect failed") == 1, "\(log.lines)")
        #expect(w.backend.vifs.first { $0.identity.id == 0 }?.state == .closing)
        endpoint.requestClose()
        try await run.value
        try await w.close()
    }

    @Test func aBrokenRingResetsThatVifAndItReconnects() async throws {
        let w = try await NetStoreWorld(frames: 2048)
        #expect(await w.bothConnected())
        let firstRing = try await w.guestStore.read(w.device.frontendPath + "/tx-ring-ref")

        // The guest scribbles on its tx ring's req_prod: a million entries ahead.
        let ref = GrantRef(UInt32(firstRing)!)
        let frame = FrameNumber(UInt64(w.guest.grantEntry(ref).pointee.frame))
        SharedRingHeader(w.guest.memory(of: frame)).requestProducer.store(1_000_000, ordering: .releasing)

        let error = try await w.backendError(within: 20)
        #expect(error?.hasPrefix("ring: ") == true)
        // The device resets: a new session with new rings, and frames flow again.
        #expect(try await eventually(20, every: .milliseconds(20)) {
            try await w.guestStore.read(w.device.frontendPath + "/tx-ring-ref") != firstRing && w.connected
        })
        try await w.port.send(patternFrame(200, seed: 9))
        #expect(await eventually(10) { w.sent.frames.withLock { $0.count } == 1 })
        try await w.close()
    }

    @Test func netfrontOffersOnlyWhatTheBackendTakes() {
        let gso4 = FrameOffload(checksumBlank: true, dataValidated: true, gso: .gso(size: 1448, type: .tcpv4, features: 0))
        let gso6 = FrameOffload(checksumBlank: true, dataValidated: true, gso: .gso(size: 1428, type: .tcpv6, features: 0))
        let plain = FrameOffload()
        let full = NetBackendFeatures(scatterGather: true, segmentation: [.tcpv4], checksumOffload: true)
        #expect(full.accepts(gso4) && !full.accepts(gso6) && full.accepts(plain))
        let noSG = NetBackendFeatures(scatterGather: false, segmentation: [.tcpv4], checksumOffload: true)
        #expect(!noSG.accepts(gso4))
        let noCsum = NetBackendFeatures(scatterGather: true, segmentation: [], checksumOffload: false)
        #expect(!noCsum.accepts(FrameOffload(checksumBlank: true)) && noCsum.accepts(plain))
    }
}


/// A memory attachment whose ``receiveQueues(_:)``, which netback calls while it connects,
/// waits at a gate first.
private final class GatedAttachment: NetworkAttachment {
    private let inner = MemoryAttachment { _, _ in true }
    private let gate: BlockingGate
    init(_ gate: BlockingGate) { self.gate = gate }
    func receiveQueues(_ count: Int) -> [any NetworkAttachment] {
        gate.pass()
        return [self]
    }
    var fileDescriptor: FileDescriptor? { inner.fileDescriptor }
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        try inner.receive(into: buffer)
    }
    func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool { try inner.send(frame, offload: offload) }
}
