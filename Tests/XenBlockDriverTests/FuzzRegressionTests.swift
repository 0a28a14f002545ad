import Logging
import Testing
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenBus
import XenLocks
import XenSimulator
import XenStore
import XenStoreServer

/// A XenStoreConnection over an in-process engine (no server, no socket), speaking as `domain`.
/// Drivers send several requests at once, as a real client allows; the engine is one
/// daemon loop's, so each request takes it under `lock`.
private final class EngineStore: XenStoreConnection, @unchecked Sendable {
    let engine = XenStoreEngine()
    let domain: DomainID
    private let lock = Lock()
    init(domain: DomainID) { self.domain = domain }
    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        let reply = lock.withLock {
            defer { _ = engine.takeOutbox() }
            return engine.perform(XenStoreMessage(type: type, payload: payload), as: domain)
        }
        if reply.type == .error { throw XenStoreError(XenStoreError.Code(rawValue: reply.text), "\(type)") }
        return reply
    }
    func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        AsyncStream { $0.finish() }
    }
    func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await body(self)
    }
}

/// Inputs the libFuzzer targets in Fuzz/ found to crash, kept as ordinary tests.
@Suite struct BlockBackendFuzzRegressionTests {
    /// fuzz-xenbus (input Fixtures/fuzz/xenbus/crash-num-queues): a guest that wrote
    /// `multi-queue-num-queues` (or `ring-page-order`) past Int.max trapped dom0's
    /// backend process in `Int(_:)` during connect; it is now refused, through the
    /// checked parser, like any value above what blkback advertised.
    @Test(arguments: [
        ("multi-queue-num-queues", "18446744073709551615"), ("multi-queue-num-queues", "9223372036854775808"),
        ("ring-page-order", "18446744073709551615"), ("ring-page-order", "9223372036854775808"),
        ("multi-queue-num-queues", "5"), ("ring-page-order", "5"), ("multi-queue-num-queues", "0"),
    ])
    func aKeyPastWhatBlkbackOffersIsRefused(key: String, value: String) async throws {
        let hv = SimulatedHypervisor(dom0Frames: 64)
        let guest = try hv.createDomain(frames: 64)
        let store = EngineStore(domain: .dom0)
        let device = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        try await store.write(device.frontendPath + "/" + key, value)
        try await store.write(device.frontendPath + "/ring-ref", "8")
        try await store.write(device.frontendPath + "/event-channel", "1")
        let backend = BlockBackendDevice(
            device: device, store: store, hypervisor: hv.dom0,
            disk: BlockBackendDisk(byteCount: 1 << 20) { try MemoryStorage(byteCount: 1 << 20) },
            logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        await #expect(throws: XenstoreValueError.self) { try await backend.connect() }
        #expect(backend.queues.isEmpty)
    }
}

@Suite struct BlockFrontendFuzzRegressionTests {
    /// fuzz-xenbus (input Fixtures/fuzz/xenbus/crash-max-queues): a backend that wrote
    /// `multi-queue-max-queues` (or `max-ring-page-order`, `feature-max-indirect-segments`)
    /// past Int.max trapped the guest in `Int(_:)`. blkif.h makes them `uint32_t`: the
    /// largest such value only means "as many as the frontend wants", capped by its own
    /// options; anything past it is refused by the checked parser (tested there).
    @Test(arguments: ["multi-queue-max-queues", "max-ring-page-order", "feature-max-indirect-segments"])
    func aHugeBackendValueIsCapped(key: String) async throws {
        let hv = SimulatedHypervisor(dom0Frames: 64)
        let guest = try hv.createDomain(frames: 256)
        let sharer = try guest.openGrantSharer()
        defer { sharer.close() }
        let store = EngineStore(domain: .dom0)
        let device = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        try await store.write(device.backendPath + "/" + key, "\(UInt32.max)")
        try await store.write(device.backendPath + "/sectors", "2048")
        let frontend = BlockFrontend()
        defer { frontend.shutdown() }
        let driver = BlockFrontendDriver(device: device, store: store, hypervisor: guest, sharer: sharer, frontend: frontend,
                                         options: BlockFrontendOptions(queues: 2, ringPageOrder: 1, poolPages: 22))
        _ = try await driver.prepare()
        #expect(driver.sharedResources.count == (key == "multi-queue-max-queues" ? 2 : 1))
        try await driver.connect()
        #expect(frontend.info?.maxIndirectSegments ?? -1 <= BlockDeviceLimits.maxIndirectSegmentsLimit)
        await driver.disconnect()
        #expect(driver.sharedResources.isEmpty)
    }
}
