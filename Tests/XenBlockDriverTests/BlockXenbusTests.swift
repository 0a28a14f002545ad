import DriverTestSupport
import Foundation
import Logging
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenBus
import XenHypervisor
import XenRing
import XenSimulator
import XenStore
import XenStoreServer

/// dom0 and a guest on the simulator with a xenstore between them: the toolstack creates
/// vbds, one `BlockBackend` serves them all, and each guest disk runs a frontend driver.
final class XenbusBlockWorld: @unchecked Sendable {
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let server: XenStoreServer
    let dom0Store: XenStoreClient
    let guestStore: XenStoreClient
    let backend: BlockBackend
    let guestSharer: any GrantSharer
    let image: TemporaryImage
    var frontends: [(endpoint: XenbusEndpoint, driver: BlockFrontendDriver, run: Task<Void, any Error>)] = []
    static let diskBytes = 8 << 20

    /// `engineOpened` runs in each queue's `makeEngine`, before the engine opens.
    init(options: BlockBackendOptions = BlockBackendOptions(), backendLog: (any LogHandler)? = nil,
         engineOpened: @escaping @Sendable () -> Void = {}) async throws {
        guest = try hv.createDomain(frames: 16384, grantFrames: 64)
        guestSharer = try guest.openGrantSharer()
        image = try TemporaryImage(bytes: Self.diskBytes)
        let base = "/tmp/blkxb-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: logger)
        try server.start()
        dom0Store = try XenStoreClient(socketPath: base + ".sock")
        guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        let path = image.path
        var backendLogger = logger
        if let backendLog { backendLogger = Logger(label: "blkback") { _ in backendLog } }
        backend = BlockBackend(store: dom0Store, hypervisor: hv.dom0, options: options, logger: backendLogger) { _, dir, store in
            let readOnly = try await store.readIfPresent(dir + "/mode") == "r"
            return BlockBackendDisk(byteCount: UInt64(XenbusBlockWorld.diskBytes), readOnly: readOnly) {
                engineOpened()
                return try LibaioStorage(path: FilePath(path), readOnly: readOnly, directIO: .preferred, queueDepth: 64)
            }
        }
        try await backend.start()
    }

    /// `hypervisor` is the frontend's (default: the guest's).
    func addDisk(id: UInt32, readOnly: Bool = false, options: BlockFrontendOptions = BlockFrontendOptions(),
                 hypervisor: (any Hypervisor)? = nil) async throws -> BlockFrontendDriver {
        let device = XenbusDevice(type: "vbd", id: id, frontend: guest.domainID)
        try await XenbusToolstack.create(device, on: dom0Store, frontendKeys: ["virtual-device": String(id)],
                                         backendKeys: ["mode": readOnly ? "r" : "w", "params": image.path, "type": "file"])
        var logger = Logger(label: "fe")
        logger.logLevel = .critical
        let driver = BlockFrontendDriver(device: device, store: guestStore, hypervisor: hypervisor ?? guest, sharer: guestSharer,
                                         options: options)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: driver, logger: logger)
        frontends.append((endpoint, driver, Task { try await endpoint.run() }))
        return driver
    }

    func connected(_ driver: BlockFrontendDriver) async -> Bool {
        guard let endpoint = frontends.first(where: { $0.driver === driver })?.endpoint,
              (try? await endpoint.connected(timeout: .seconds(60))) != nil else { return false }
        // Connected is published after `connect` attached the frontend.
        return driver.frontend.info != nil
    }

    /// As many disks as the pool has threads (their frontends on `hypervisor`) reach `gate`;
    /// the test, still running, opens it; each disk then connects, and none waited for the
    /// gate to give up.
    func connectWhileHeld(by gate: BlockingGate, hypervisor: (any Hypervisor)? = nil) async throws {
        var drivers: [BlockFrontendDriver] = []
        for i in 0..<BlockingGate.poolThreads { drivers.append(try await addDisk(id: 51712 + 16 * UInt32(i), hypervisor: hypervisor)) }
        #expect(await eventually { gate.waiting >= BlockingGate.poolThreads })
        gate.open()
        for d in drivers { #expect(await connected(d)) }
        #expect(!gate.timedOut, "the blocking calls held the pool until their gate gave up")
    }

    func teardown() async throws -> Leftovers {
        for f in frontends { f.endpoint.requestClose() }
        await backend.shutdown()
        for f in frontends {
            _ = try? await withTimeout(10) { try await f.run.value }
            await f.driver.disconnect()
            f.driver.frontend.shutdown()
        }
        guestSharer.close()
        // `stop()` waits for the store's loop thread to end: on a thread of its own.
        let server = server
        _ = await onThread { server.stop(timeout: minimumDeadline) }
        return hv.shutdown()
    }
}

@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockXenbusTests {
    @Test func theHandshakeAdvertisesAndNegotiatesEveryKey() async throws {
        let world = try await XenbusBlockWorld()
        let driver = try await world.addDisk(id: 51712, options: BlockFrontendOptions(queues: 2, ringPageOrder: 2))
        #expect(await world.connected(driver))
        let be = driver.device.backendPath, fe = driver.device.frontendPath
        let s = world.dom0Store
        #expect(try await s.read(be + "/sectors") == String(XenbusBlockWorld.diskBytes / 512))
        #expect(try await s.read(be + "/sector-size") == "512")
        #expect(try await s.read(be + "/physical-sector-size") == "512")
        #expect(try await s.read(be + "/info") == "0")
        for key in ["feature-flush-cache", "feature-barrier", "feature-discard", "feature-persistent"] {
            #expect(try await s.read(be + "/" + key) == "1", "\(key)")
        }
        #expect(try await s.read(be + "/discard-granularity") == "512")
        #expect(try await s.read(be + "/discard-alignment") == "0")
        #expect(try await s.read(be + "/discard-secure") == "0")
        #expect(try await s.read(be + "/feature-max-indirect-segments") == "256")
        #expect(try await s.read(be + "/max-ring-page-order") == "4")
        #expect(try await s.read(be + "/multi-queue-max-queues") == "4")
        #expect(try await s.read(fe + "/multi-queue-num-queues") == "2")
        #expect(try await s.read(fe + "/ring-page-order") == "2")
        #expect(try await s.read(fe + "/protocol") == "x86_64-abi")
        #expect(try await s.read(fe + "/feature-persistent") == "1")
        for q in 0..<2 {
            for i in 0..<4 { #expect(try await s.readIfPresent("\(fe)/queue-\(q)/ring-ref\(i)") != nil) }
            #expect(try await s.readIfPresent("\(fe)/queue-\(q)/event-channel") != nil)
        }
        #expect(world.backend.driver(for: driver.device)?.queues.count == 2)
        let frontend = driver.frontend
        try await withTimeout(30) {
            try await shadowWorkout(frontend, deviceBytes: XenbusBlockWorld.diskBytes, operations: 8, maxBytes: 256 << 10)
        }
        let leftovers = try await world.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func oneBackendServesTwoDisksAndAReadOnlyOne() async throws {
        let world = try await XenbusBlockWorld()
        let a = try await world.addDisk(id: 51712)
        let b = try await world.addDisk(id: 51728, readOnly: true)
        #expect(await world.connected(a))
        #expect(await world.connected(b))
        #expect(b.frontend.info?.readOnly == true)
        let fa = a.frontend, fb = b.frontend
        try await withTimeout(20) {
            try await fa.write(at: 4096, [UInt8](repeating: 0x3C, count: 8192))
            #expect(try await fb.read(at: 4096, count: 8192) == [UInt8](repeating: 0x3C, count: 8192))
            do {
                try await fb.write(at: 0, [UInt8](repeating: 1, count: 512))
                Issue.record("read-only disk took a write")
            } catch let e as BlockFrontError { #expect(e.code == .readOnly) }
        }
        #expect(try await world.dom0Store.read(b.device.backendPath + "/info") == "4")
        // blkback publishes each disk's counters for `xenpv top` (about once a second).
        let stats = DeviceStatistics.root(of: .dom0) + "/vbd/\(a.device.frontendDomain.rawValue)/51712"
        var published: [String: UInt64] = [:]
        _ = await eventually(10, every: .milliseconds(50)) {
            published = DeviceStatistics.decode((try? await world.dom0Store.read(stats)) ?? "")
            return (published["requests"] ?? 0) != 0
        }
        #expect((published["requests"] ?? 0) >= 1 && (published["segments"] ?? 0) >= 2)
        #expect((published["bytes"] ?? 0) >= 8192 && published["ring_size"] == 32)
        #expect(try await world.teardown().isEmpty)
    }

    /// The backend's device is stopped mid-stream and started again: the frontend redoes
    /// the handshake and re-issues what had no response; no acknowledged write is lost.
    @Test func aBackendRestartMidStreamLosesNoAcknowledgedWrite() async throws {
        let world = try await XenbusBlockWorld()
        let driver = try await world.addDisk(id: 51712, options: BlockFrontendOptions(queues: 2))
        #expect(await world.connected(driver))
        let fe = driver.frontend
        let acknowledged = Acknowledged()
        let gate = Gate()  // writers hold at round 4 until the backend is gone
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for t in 0..<4 {
                    group.addTask {
                        for round in 0..<16 {
                            if round == 4 { await gate.passed() }
                            let block = t * 16 + round
                            let fill = UInt8(truncatingIfNeeded: block &* 5 &+ 2)
                            try await fe.write(at: UInt64(block << 16), [UInt8](repeating: fill, count: 1 << 16))
                            acknowledged.map.withLock { $0[block] = fill }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        #expect(await eventually(30) { acknowledged.map.withLock { $0.count } == 16 })
        await world.backend.stop(driver.device)
        #expect(world.backend.driver(for: driver.device) == nil)
        gate.open()  // their next writes find no backend
        try await Task.sleep(for: .milliseconds(50))
        let during = acknowledged.map.withLock { $0.count }
        await world.backend.resume(driver.device)
        try await withTimeout(30) { try await writers.value }
        #expect(during == 16)
        let written = acknowledged.map.withLock { $0 }
        #expect(written.count == 64)
        try await withTimeout(20) {
            for (block, fill) in written {
                let back = try await fe.read(at: UInt64(block << 16), count: 1 << 16)
                #expect(back.allSatisfy { $0 == fill }, "block \(block)")
            }
        }
        #expect(try await world.teardown().isEmpty)
    }

    /// blkfront's prepare shares pages and allocates ports (blocking calls) off the pool too:
    /// as many disks as the pool has threads prepare while their port allocation is held.
    @Test func preparesThatBlockHoldNoThreadOfThePool() async throws {
        let gate = BlockingGate()
        let world = try await XenbusBlockWorld()
        try await world.connectWhileHeld(by: gate, hypervisor: GatedHypervisor(world.guest, gate: gate))
        #expect(try await world.teardown().isEmpty)
    }

    /// blkfront tells how long ago its connection took its first response (how a resumed
    /// guest times the first request the destination answered): none on a fresh
    /// connection, and on the next one only that connection's own.
    @Test func eachConnectionKnowsItsFirstResponse() async throws {
        let world = try await XenbusBlockWorld()
        let driver = try await world.addDisk(id: 51712)
        #expect(await world.connected(driver))
        let fe = driver.frontend
        #expect(fe.sinceFirstResponse == nil)
        _ = try await withTimeout(20) { try await fe.read(at: 0, count: 512) }
        #expect(fe.sinceFirstResponse != nil)
        await world.backend.stop(driver.device)
        await world.backend.resume(driver.device)
        // The read waits for the new connection; its answer is that connection's first.
        let before = ContinuousClock.now
        _ = try await withTimeout(30) { try await fe.read(at: 4096, count: 512) }
        let since = try #require(fe.sinceFirstResponse)
        #expect(since <= ContinuousClock.now - before, "the first connection's response, not the new one's")
        #expect(try await world.teardown().isEmpty)
    }

    /// A queue's bounce pages stay with the backend when its connection ends, backed and
    /// cleared, and the next connection's queue starts on them (no page to fault in and
    /// zero on its first requests: a migrated guest's downtime), at most `keep` of them.
    @Test func aReconnectedQueueStartsOnTheBouncePagesItsPredecessorGaveBack() async throws {
        let world = try await XenbusBlockWorld()
        let driver = try await world.addDisk(id: 51712)
        #expect(await world.connected(driver))
        let fe = driver.frontend
        try await withTimeout(20) { try await fe.write(at: 0, [UInt8](repeating: 7, count: 1 << 16)) }
        let pools = world.backend.bouncePools
        await world.backend.stop(driver.device)
        // Its queue gave its pool back (and InitWait warmed one before): kept, within the bound.
        #expect(await eventually(30) { pools.keptCount >= 1 })
        await world.backend.resume(driver.device)
        #expect(await eventually(30) { world.backend.driver(for: driver.device)?.queues.isEmpty == false })
        let queue = try #require(world.backend.driver(for: driver.device)?.queues.first)
        #expect(queue.counters.warmBouncePool.value == 1)
        // The disk works on it, and holds what the first connection wrote.
        let back = try await withTimeout(30) { try await fe.read(at: 0, count: 1 << 16) }
        #expect(back == [UInt8](repeating: 7, count: 1 << 16))
        #expect(pools.keptCount <= pools.keep)
        #expect(try await world.teardown().isEmpty)
    }

    /// A frontend whose req_prod runs far ahead gets its device closed (with the reason
    /// in its error key); the other disk on the same backend keeps working.
    @Test func aRingViolationClosesThatDeviceOnly() async throws {
        let world = try await XenbusBlockWorld()
        let bad = try await world.addDisk(id: 51712)
        let good = try await world.addDisk(id: 51728)
        #expect(await world.connected(bad))
        #expect(await world.connected(good))
        let r = bad.sharedResources[0]
        SharedRingHeader(r.ring.memory.base).requestProducer.store(100_000, ordering: .releasing)
        try r.events.notify(r.port)
        #expect(await eventually(20) { world.backend.driver(for: bad.device) == nil })
        let state = try await world.dom0Store.readState(bad.device.backendPath)
        #expect(state == .closed)
        let reason = try await world.dom0Store.readIfPresent(bad.device.backendPath + "/error")
        #expect(reason?.hasPrefix("ring: ") == true, "\(reason ?? "no error key")")
        let fg = good.frontend
        try await withTimeout(20) {
            try await fg.write(at: 0, [UInt8](repeating: 9, count: 65536))
            #expect(try await fg.read(at: 0, count: 65536) == [UInt8](repeating: 9, count: 65536))
        }
        #expect(try await world.teardown().isEmpty)
    }

    /// The same data with persistent grants and indirect requests announced or not.
    @Test(arguments: [(true, true), (false, false), (true, false), (false, true)])
    func theSameDataWithPersistentAndIndirectOnOrOff(persistent: Bool, indirect: Bool) async throws {
        let world = try await XenbusBlockWorld()
        let driver = try await world.addDisk(id: 51712, options: BlockFrontendOptions(indirect: indirect, persistent: persistent))
        #expect(await world.connected(driver))
        #expect(try await world.dom0Store.read(driver.device.frontendPath + "/feature-persistent") == (persistent ? "1" : "0"))
        #expect(driver.frontend.info?.maxIndirectSegments == (indirect ? 256 : 0))
        let fe = driver.frontend
        try await withTimeout(30) {
            try await shadowWorkout(fe, deviceBytes: XenbusBlockWorld.diskBytes, operations: 6, maxBytes: 512 << 10, tasks: 2)
        }
        #expect(try await world.teardown().isEmpty)
    }

    /// A backend's connect blocks while it maps, binds and opens engines: not on a thread of
    /// the cooperative pool, where as many connects as the pool has threads would stall
    /// every other task of the process (the other devices' handshakes after a migration).
    /// Here as many disks as the pool has threads connect while `makeEngine` holds them all;
    /// this test itself must run meanwhile to let them go.
    @Test func connectsThatBlockHoldNoThreadOfThePool() async throws {
        let gate = BlockingGate()
        let world = try await XenbusBlockWorld(engineOpened: { gate.pass() })
        try await world.connectWhileHeld(by: gate)
        #expect(try await world.teardown().isEmpty)
    }
}
