import Foundation
import Glibc
import Logging
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockStorage
import XenBus
import XenHypervisor
import XenLocks
import XenSimulator
import XenStore
import XenStoreServer

/// What every storage engine of one disk saw, across backends: each 4 KiB block's
/// writes, and whether the engines stall (a "held" engine takes operations and starts
/// none until its backend is torn down, as a source host whose storage stalled at the
/// pause: the answers come only once the guest has gone).
final class StorageLedger: Sendable {
    struct State {
        var writes: [UInt64: Int] = [:]
        /// Engines are made in an epoch (one per backend); those of `heldEpoch` hold.
        var epoch = 0
        var heldEpoch: Int?
        var held = 0
    }
    let state = Locked(State())

    /// The engines made so far hold what they are given from now on.
    func hold() { state.withLock { $0.heldEpoch = $0.epoch } }
    /// Engines made from now on belong to a new backend and do not hold; the older ones
    /// start what they held (at their next reap: their backend's close drains them).
    func nextBackend() { state.withLock { $0.epoch += 1 } }
    var held: Int { state.withLock { $0.held } }
    var writes: [UInt64: Int] { state.withLock { $0.writes } }
}

/// An engine that records each write it passes on in a ``StorageLedger``, and while the
/// ledger holds, accepts operations without starting them, until the ledger moves on to
/// the next backend: then it starts them (its backend drains it as it closes).
final class LedgerStorage: ForwardingStorage, @unchecked Sendable {
    // @unchecked: one backend queue thread drives it, as every engine.
    let inner: any StorageEngine
    private let ledger: StorageLedger
    private var heldOps: [StorageOperation] = []
    private let epoch: Int

    init(_ inner: any StorageEngine, ledger: StorageLedger) {
        self.inner = inner
        self.ledger = ledger
        epoch = ledger.state.withLock { $0.epoch }
    }

    var outstanding: Int { inner.outstanding + heldOps.count }

    func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        if isHolding {
            let n = max(0, min(operations.count, queueDepth - outstanding))
            heldOps += operations[0..<n]
            ledger.state.withLock { $0.held += n }
            return n
        }
        try releaseHeld()
        guard heldOps.isEmpty else { return 0 }
        return try pass(operations)
    }

    private var isHolding: Bool {
        ledger.state.withLock { $0.heldEpoch == epoch && $0.epoch == epoch }
    }

    /// Starts what was held, once the ledger moved on.
    private func releaseHeld() throws(StorageError) {
        guard !heldOps.isEmpty, !isHolding else { return }
        let ops = heldOps
        let n = try ops.withUnsafeBufferPointer { buffer throws(StorageError) in try pass(buffer) }
        heldOps.removeFirst(n)
    }

    private func pass(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        let n = try inner.submit(operations)
        ledger.state.withLock { s in
            for op in operations[0..<n] where op.kind == .write {
                var block = op.offset / 4096
                while block * 4096 < op.offset + op.transferLength {
                    s.writes[block, default: 0] += 1
                    block += 1
                }
            }
        }
        return n
    }

    func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        try releaseHeld()
        return try inner.reap(into: completions, timeout: timeout)
    }
}

/// dom0 and a guest with a xenstore, a disk on a file seen through a ``StorageLedger``,
/// a frontend whose endpoint a ``GuestSuspender`` serves on `control/shutdown`, and
/// backends that can be replaced: the source's goes, a destination's comes.
final class SuspendBlockWorld: @unchecked Sendable {
    let hv = SimulatedHypervisor()
    let guest: SimulatedDomain
    let server: XenStoreServer
    let dom0Store: XenStoreClient
    let guestStore: XenStoreClient
    let guestSharer: any GrantSharer
    let image: TemporaryImage
    let ledger = StorageLedger()
    var backend: BlockBackend
    let device: XenbusDevice
    let driver: BlockFrontendDriver
    let endpoint: XenbusEndpoint
    let suspender: GuestSuspender
    private var tasks: [Task<Void, any Error>] = []
    static let diskBytes = 8 << 20

    init(frontendOptions: BlockFrontendOptions = BlockFrontendOptions(queues: 2), suspendTimeout: Duration = .seconds(120)) async throws {
        guest = try hv.createDomain(frames: 16384, grantFrames: 64)
        guestSharer = try guest.openGrantSharer()
        image = try TemporaryImage(bytes: Self.diskBytes)
        let base = "/tmp/blksus-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: logger)
        try server.start()
        dom0Store = try XenStoreClient(socketPath: base + ".sock")
        guestStore = try XenStoreClient(socketPath: base + "-g.sock")
        try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
        // As libxl: `control` is the guest's, so it can acknowledge a request.
        let control = XenStorePath.home(of: guest.domainID) + "/control"
        try await dom0Store.mkdir(control)
        try await dom0Store.setPermissions(control, XenStorePermissions(owner: guest.domainID))
        backend = try await Self.startBackend(self_: (dom0Store, hv, image.path, ledger), options: BlockBackendOptions(), sectors: nil)
        device = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        try await XenbusToolstack.create(device, on: dom0Store, frontendKeys: ["virtual-device": "51712"],
                                         backendKeys: ["mode": "w", "params": image.path, "type": "file"])
        driver = BlockFrontendDriver(device: device, store: guestStore, hypervisor: guest, sharer: guestSharer, options: frontendOptions)
        endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                  peerPath: device.backendPath, driver: driver, logger: logger)
        suspender = GuestSuspender(hypervisor: guest, devices: [endpoint], timeout: suspendTimeout, logger: logger)
        let endpoint = self.endpoint, suspender = self.suspender
        let guestControl = GuestControl(store: guestStore, domain: guest.domainID)
        tasks.append(Task { try await endpoint.run() })
        tasks.append(Task { try await suspender.run(control: guestControl) })
    }

    /// A backend over the same file (a disk of `sectors` sectors if given, to play a
    /// destination whose disk differs).
    static func startBackend(self_ world: (store: XenStoreClient, hv: SimulatedHypervisor, path: String, ledger: StorageLedger),
                             options: BlockBackendOptions, sectors: UInt64?, engine: FileEngineKind = .libaio,
                             discard: Bool = true) async throws -> BlockBackend {
        var logger = Logger(label: "blkback")
        logger.logLevel = .critical
        let (path, ledger) = (world.path, world.ledger)
        let bytes = sectors.map { $0 * 512 } ?? UInt64(diskBytes)
        let backend = BlockBackend(store: world.store, hypervisor: world.hv.dom0, options: options, logger: logger) { _, _, _ in
            BlockBackendDisk(byteCount: bytes, readOnly: false, discard: discard) {
                LedgerStorage(try engine.open(FilePath(path), readOnly: false, directIO: .preferred, queueDepth: 64), ledger: ledger)
            }
        }
        try await backend.start()
        return backend
    }

    /// The toolstack's part of a save and restore: asks for a suspend, waits for the
    /// guest's call, takes the source's devices away, starts the destination's backend,
    /// and answers. Returns what the resume took from the guest's old copy.
    func migrate(to options: BlockBackendOptions, sectors: UInt64? = nil, engine: FileEngineKind = .libaio,
                 discard: Bool = true, paused: () -> Void = {}) async throws -> Leftovers {
        try await requestSuspend()
        #expect(await guest.waitForSuspend(timeout: .seconds(60)))
        paused()
        // The source's backend goes without a handshake, as its host destroys it.
        ledger.nextBackend()
        await backend.devices.cancel()
        backend = try await Self.startBackend(self_: (dom0Store, hv, image.path, ledger), options: options, sectors: sectors,
                                              engine: engine, discard: discard)
        return try guest.finishSuspend(.resumed)
    }

    func requestSuspend(_ value: String = "suspend") async throws {
        try await dom0Store.write(XenStorePath.home(of: guest.domainID) + "/" + GuestControl.shutdownKey, value)
    }

    var shutdownKey: String? {
        get async throws { try await dom0Store.readIfPresent(XenStorePath.home(of: guest.domainID) + "/" + GuestControl.shutdownKey) }
    }

    /// The image file's bytes at `offset`.
    func onDisk(at offset: Int, count: Int) throws -> [UInt8] {
        let fd = open(image.path, O_RDONLY)
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
        #expect(n == count)
        return out
    }

    func teardown() async throws -> Leftovers {
        endpoint.requestClose()
        await backend.shutdown()
        for t in tasks { t.cancel() }
        _ = try? await withTimeout(10) { [tasks] in for t in tasks { _ = try? await t.value } }
        await driver.disconnect()
        driver.frontend.shutdown()
        guestSharer.close()
        // `stop()` waits for the store's loop thread to end: on a thread of its own.
        let server = server
        _ = await onThread { server.stop(timeout: minimumDeadline) }
        return hv.shutdown()
    }
}

/// Many writers, each block written once with its own fill, recording what was acknowledged.
final class BlockWriters: Sendable {
    let acknowledged = Locked<[Int: UInt8]>([:])
    let errors = Locked<[String]>([])

    static func fill(_ block: Int) -> UInt8 { UInt8(truncatingIfNeeded: block &* 7 &+ 3) | 1 }

    /// `tasks` writers of `rounds` 4 KiB blocks each; block `t * rounds + r`.
    func run(_ frontend: BlockFrontend, tasks: Int, rounds: Int) -> Task<Void, Never> {
        Task {
            await withTaskGroup(of: Void.self) { group in
                for t in 0..<tasks {
                    group.addTask { [self] in
                        for r in 0..<rounds {
                            let block = t * rounds + r
                            do {
                                try await frontend.write(at: UInt64(block * 4096), [UInt8](repeating: Self.fill(block), count: 4096))
                                acknowledged.withLock { $0[block] = Self.fill(block) }
                            } catch {
                                errors.withLock { $0.append("block \(block): \(error)") }
                                return
                            }
                        }
                    }
                }
            }
        }
    }
}

@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockSuspendTests {
    /// 32 writers keep the rings full; the source's storage stalls with requests in
    /// flight, the toolstack asks for a suspend, the source's backend drains its storage
    /// as it goes (its answers reach a guest that is no longer looking), and the guest
    /// resumes against a destination backend offering no persistent grants and fewer
    /// segments and no discard, on io_uring where this kernel allows it (libaio otherwise). A write acknowledged before the pause is on disk exactly once; one in
    /// flight at the pause is re-issued once (so the disk sees it at most twice: from the
    /// source and from the destination); every block holds its content and no caller saw
    /// an error.
    @Test func writesInFlightAcrossAResumeOnAnotherBackendAreEachWrittenOnce() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        #expect(fe.info?.maxIndirectSegments == 256)
        let writers = BlockWriters()
        let run = writers.run(fe, tasks: 32, rounds: 16)
        #expect(await eventually(60) { writers.acknowledged.withLock { $0.count } >= 64 })
        world.ledger.hold()
        // The writers fill the rings: at least 16 requests wait on the stalled storage.
        #expect(await eventually(60) { world.ledger.held >= 16 })
        let reissuedBefore = fe.reissued.value
        let pagesBefore = world.driver.sharedResources.map { [$0.ring.memory, $0.pool.memory, $0.indirect.memory] }
        var destination = BlockBackendOptions()
        destination.persistent = false
        destination.maxIndirectSegments = 32
        var before: [Int: UInt8] = [:]
        let engine = FileEngineKind.preferred.kind
        #expect(fe.info?.discard == true)
        let revoked = try await world.migrate(to: destination, engine: engine, discard: false) {
            // Quiesced: nothing is acknowledged from here until the resume.
            before = writers.acknowledged.withLock { $0 }
        }
        // The source's backend had let go of everything; the ring and pool grants went.
        #expect(revoked.mappings.isEmpty, "\(revoked)")
        #expect(!revoked.grants.isEmpty)
        #expect(try await world.shutdownKey == "")
        // The device's new handshake is timed, by its path, after the hypervisor's answer.
        #expect(await eventually(60) { !world.suspender.isSuspending })
        let reconnected = try #require(await world.suspender.reconnectedDevices(timeout: .seconds(60)))
        #expect(reconnected.map(\.path) == [world.endpoint.path])
        let answered = try #require(world.suspender.lastTiming?.answered)
        #expect(reconnected.allSatisfy { $0.at >= answered })
        #expect(await world.suspender.reconnected(timeout: .seconds(60)) == reconnected.first?.at)
        try await withTimeout(120) { await run.value }
        #expect(writers.errors.withLock { $0 } == [])
        #expect(writers.acknowledged.withLock { $0.count } == 32 * 16)
        // The same ring, pool and indirect pages, granted anew: nothing new was allocated
        // and zeroed while the guest was down.
        #expect(world.driver.sharedResources.map { [$0.ring.memory, $0.pool.memory, $0.indirect.memory] } == pagesBefore)
        #expect(fe.info?.maxIndirectSegments == 32)
        // The destination cannot discard: the device says so, and a discard is refused.
        #expect(fe.info?.discard == false)
        await #expect(throws: BlockFrontError.self) { try await fe.discard(at: 0, length: 4096) }
        #expect(try await world.dom0Store.read(world.device.backendPath + "/feature-persistent") == "0")
        let reissued = Int(fe.reissued.value - reissuedBefore)
        #expect(reissued >= world.ledger.held, "every held request is re-issued")
        let writes = world.ledger.writes
        var twice = 0
        for block in 0..<(32 * 16) {
            let count = writes[UInt64(block)] ?? 0
            if before[block] != nil {
                #expect(count == 1, "block \(block), acknowledged before the pause, written \(count) times")
            } else {
                #expect(count == 1 || count == 2, "block \(block) written \(count) times")
            }
            if count == 2 { twice += 1 }
            #expect(try world.onDisk(at: block * 4096, count: 4096).allSatisfy { $0 == BlockWriters.fill(block) }, "block \(block)")
        }
        // Only a re-issued request reaches the disk twice; each held one did.
        #expect(twice <= reissued)
        #expect(twice >= world.ledger.held)
        #expect(before.count >= 64)
        // More I/O on the destination, reads included.
        let back = try await fe.read(at: 0, count: 64 << 10)
        #expect(back[0] == BlockWriters.fill(0))
        let leftovers = try await world.teardown()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// After a resume a queue grants the same ring, pool and indirect pages again (what
    /// they hold kept, the ring initialised afresh) under new references, with a new port:
    /// nothing to allocate and zero while the guest is down.
    @Test func aResumedQueueSharesItsOwnPagesAgain() async throws {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 4096, grantFrames: 16)
        let sharer = try guest.openGrantSharer()
        let before = try BlockFrontQueueResources.allocate(hypervisor: guest, sharer: sharer, backend: .dom0, poolPages: 8)
        for i in 0..<8 { before.pool.memory.page(i).storeBytes(of: UInt64(0xE000 + i), as: UInt64.self) }
        before.ring.memory.base.storeBytes(of: UInt32(5), as: UInt32.self)  // req_prod of a ring in use
        let call = Task {
            await onThread { Result { () throws(HypervisorError) -> SuspendOutcome in try guest.suspend(timeout: .seconds(120)) } }
        }
        #expect(await guest.waitForSuspend(timeout: .seconds(60)))
        _ = try guest.finishSuspend(.resumed)
        #expect(try await call.value.get() == .resumed)

        let after = try before.sharedAgain(hypervisor: guest, sharer: sharer)
        #expect(after.ring.memory == before.ring.memory && after.pool.memory == before.pool.memory
                && after.indirect.memory == before.indirect.memory)
        #expect(after.ring.memory.base.load(as: UInt32.self) == 0, "the ring starts afresh")
        let mapper = try hv.dom0.openGrantMapper()
        let pool = try mapper.map(after.pool.refs, from: guest.domainID, writable: true)
        for i in 0..<8 { #expect(pool.memory.page(i).load(as: UInt64.self) == UInt64(0xE000 + i)) }
        try mapper.unmap(pool)
        let events = try hv.dom0.openEventChannels()
        let port = try events.bindInterdomain(remote: guest.domainID, remotePort: after.port)
        try events.unbind(port)
        #expect(after.release(sharer: sharer, timeout: 0))
        mapper.close()
        events.close()
        #expect(hv.shutdown().isEmpty)
    }

    /// A cancelled suspend: the devices go on with the same rings on the same backend.
    @Test func aCancelledSuspendGoesOnWithTheSameRings() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        let rings = world.driver.sharedResources.map(\.ring)
        let writers = BlockWriters()
        let run = writers.run(fe, tasks: 16, rounds: 16)
        #expect(await eventually(60) { writers.acknowledged.withLock { $0.count } >= 32 })
        try await world.requestSuspend()
        #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
        let backendDriver = world.backend.driver(for: world.device)
        #expect(try world.guest.finishSuspend(.cancelled).isEmpty)
        try await withTimeout(120) { await run.value }
        #expect(writers.errors.withLock { $0 } == [])
        #expect(writers.acknowledged.withLock { $0.count } == 16 * 16)
        #expect(world.driver.sharedResources.map(\.ring) == rings)
        #expect(world.backend.driver(for: world.device) === backendDriver)
        #expect(fe.reissued.value == 0)
        for (block, count) in world.ledger.writes { #expect(count == 1, "block \(block)") }
        #expect(try await world.teardown().isEmpty)
    }

    /// While suspended the device acts on nothing: the backend closing meanwhile is seen
    /// only after the (cancelled) suspend, and the device then reconnects as after any
    /// backend restart, re-issuing what had no answer.
    @Test func aSuspendedDeviceActsOnNothingUntilResumed() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        try await fe.write(at: 0, [UInt8](repeating: 7, count: 4096))
        try await world.requestSuspend()
        #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
        let waiting = Task { try await fe.write(at: 4096, [UInt8](repeating: 8, count: 4096)) }
        // The backend closes; the frontend, suspended, does not answer.
        let stopping = Task { await world.backend.stop(world.device, timeout: 60) }
        #expect(await eventually(30) {
            (try? await world.dom0Store.readIfPresent(world.device.backendPath + "/state")) == String(XenbusState.closing.rawValue)
        })
        try await Task.sleep(for: .milliseconds(100))
        #expect(world.endpoint.state == .connected)
        #expect(try await world.guestStore.read(world.device.frontendPath + "/state") == String(XenbusState.connected.rawValue))
        #expect(!world.driver.sharedResources.isEmpty)
        try world.guest.finishSuspend(.cancelled)
        // Resumed, it sees the backend closing and closes its side; the backend comes back.
        await stopping.value
        await world.backend.resume(world.device)
        try await withTimeout(60) { try await waiting.value }
        #expect(try await fe.read(at: 0, count: 8192) == [UInt8](repeating: 7, count: 4096) + [UInt8](repeating: 8, count: 4096))
        #expect(try await world.teardown().isEmpty)
    }

    /// With `XENPV_SUSPEND_BENCH=1`: how long a resume keeps a disk's I/O waiting in one
    /// process, from the toolstack's `.resumed` answer to the first write answered by the
    /// destination's backend (the guest's share of a migration's downtime: drop the old
    /// session, handshake, re-issue). Prints the median of 15 and the extremes.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["XENPV_SUSPEND_BENCH"] == "1"))
    func resumeToFirstWriteTime() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        var times: [Duration] = []
        for round in 0..<15 {
            try await world.requestSuspend()
            #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
            let write = Task { try await fe.write(at: UInt64(round * 4096), [UInt8](repeating: UInt8(round + 1), count: 4096)) }
            world.ledger.nextBackend()
            await world.backend.devices.cancel()
            world.backend = try await SuspendBlockWorld.startBackend(
                self_: (world.dom0Store, world.hv, world.image.path, world.ledger), options: BlockBackendOptions(), sectors: nil)
            // The destination's backend waits in InitWait before the guest runs, as a toolstack's does.
            #expect(await eventually(30) {
                (try? await world.dom0Store.readIfPresent(world.device.backendPath + "/state")) == String(XenbusState.initWait.rawValue)
            })
            let start = ContinuousClock.now
            try world.guest.finishSuspend(.resumed)
            try await withTimeout(60) { try await write.value }
            times.append(ContinuousClock.now - start)
        }
        let sorted = times.sorted()
        print("resume to first write answered: median \(sorted[sorted.count / 2]), min \(sorted[0]), max \(sorted[sorted.count - 1])")
        #expect(try await world.teardown().isEmpty)
    }

    /// A suspend the hypervisor refuses (it throws) is a cancel: I/O goes on.
    @Test func aSuspendThatThrowsIsACancel() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        let writers = BlockWriters()
        let run = writers.run(fe, tasks: 8, rounds: 8)
        try await world.requestSuspend()
        #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
        try world.guest.failSuspend(.errno(.ioError, "the save file could not be written"))
        try await withTimeout(120) { await run.value }
        #expect(writers.errors.withLock { $0 } == [])
        #expect(writers.acknowledged.withLock { $0.count } == 64)
        // And the next suspend works, once the first is over (its I/O goes on as soon as the
        // device resumed, a moment before the suspend returns).
        #expect(await eventually { !world.suspender.isSuspending })
        let result = Task { await world.suspender.suspend() }
        #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
        try world.guest.finishSuspend(.cancelled)
        #expect(await result.value == .cancelled)
        try await fe.write(at: 0, [UInt8](repeating: 9, count: 512))
        #expect(try await world.teardown().isEmpty)
    }

    /// A suspend call with no answer times out, and is a cancel too.
    @Test func aSuspendWithNoAnswerTimesOutAsACancel() async throws {
        let world = try await SuspendBlockWorld(suspendTimeout: .milliseconds(200))
        try await world.endpoint.connected(timeout: .seconds(60))
        let result = await world.suspender.suspend()
        guard case .failed(let error) = result else {
            Issue.record("expected a failure, got \(result)")
            return
        }
        #expect(error.code == .errno(.timedOut))
        try await world.driver.frontend.write(at: 4096, [UInt8](repeating: 5, count: 4096))
        #expect(try await world.driver.frontend.read(at: 4096, count: 4096) == [UInt8](repeating: 5, count: 4096))
        #expect(try await world.teardown().isEmpty)
    }

    /// Hostile control values: a second suspend request while suspending is acknowledged
    /// and ignored; a value that is no request stays in the key, ignored; neither breaks I/O.
    @Test func aSecondRequestWhileSuspendingAndABogusValueAreIgnored() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        try await world.requestSuspend("hibernate-please")
        try await world.requestSuspend("suspend\u{7F}")
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await world.shutdownKey == "suspend\u{7F}")
        #expect(world.guest.suspendCalls == 0)
        try await fe.write(at: 0, [UInt8](repeating: 1, count: 4096))

        try await world.requestSuspend()
        #expect(await world.guest.waitForSuspend(timeout: .seconds(60)))
        try await world.requestSuspend()
        // Acknowledged (cleared) and ignored: still one call.
        #expect(await eventually(30) { (try? await world.shutdownKey) == "" })
        #expect(world.guest.suspendCalls == 1)
        #expect(await world.suspender.suspend() == .busy)
        // A write made while suspended waits, then completes after the resume.
        let late = Task { try await fe.write(at: 8192, [UInt8](repeating: 2, count: 4096)) }
        try world.guest.finishSuspend(.cancelled)
        try await withTimeout(60) { try await late.value }
        #expect(world.guest.suspendCalls == 1)
        #expect(try await fe.read(at: 8192, count: 4096) == [UInt8](repeating: 2, count: 4096))
        #expect(try await world.teardown().isEmpty)
    }

    /// A destination whose disk has another size is not the same disk: the waiting calls
    /// fail with `.changed` and the device closes with the reason in its error key.
    @Test func aDestinationDiskOfAnotherSizeFailsTheDevice() async throws {
        let world = try await SuspendBlockWorld()
        try await world.endpoint.connected(timeout: .seconds(60))
        let fe = world.driver.frontend
        try await fe.write(at: 0, [UInt8](repeating: 1, count: 4096))
        world.ledger.hold()
        let waiting = Task { () -> BlockFrontError? in
            do { try await fe.write(at: 4096, [UInt8](repeating: 2, count: 4096)) } catch { return error as? BlockFrontError }
            return nil
        }
        #expect(await eventually(60) { world.ledger.held >= 1 })
        _ = try await world.migrate(to: BlockBackendOptions(), sectors: UInt64(SuspendBlockWorld.diskBytes / 512 / 2))
        let error = try await withTimeout(60) { await waiting.value }
        #expect(error?.code == .changed)
        #expect(await eventually(60) {
            (try? await world.guestStore.readIfPresent(world.device.frontendPath + "/error"))??.contains("sectors") == true
        })
        _ = try await world.teardown()
    }
}
