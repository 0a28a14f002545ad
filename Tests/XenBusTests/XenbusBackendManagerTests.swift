import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenLocks
@testable import XenBus
@testable import XenStore
import XenStoreServer

/// Makes a ``RecordingDriver`` per device; refuses the devices it is told to.
struct RecordingFactory: XenbusBackendDeviceFactory {
    let refused: Set<UInt32>
    var deviceType: String { "vif" }
    func makeDevice(_ device: XenbusDevice, frontendPath: String, control: XenbusDeviceControl) async throws -> RecordingDriver {
        if refused.contains(device.id) { throw XenStoreError(.invalid, "no such device here") }
        return RecordingDriver()
    }
}

/// A connection that counts the directory listings sent through it.
final class ListingCounter: XenStoreConnection {
    let inner: XenStoreClient
    private let count = Locked(0)
    init(_ inner: XenStoreClient) { self.inner = inner }
    var listings: Int { count.withLock { $0 } }

    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        if type == .directory { count.withLock { $0 += 1 } }
        return try await inner.request(type, payload: payload)
    }
    func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        try await inner.watchEvents(path)
    }
    func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await inner.inTransaction(body)
    }
}

/// The generic device manager serves, stops, resumes and re-serves devices, driven by
/// store watches (no test here waits on a clock except as a bound).
@Suite(.timeLimit(.minutes(5)), .serialized)
struct XenbusBackendManagerTests {
    @Test func aDeviceIsServedStoppedResumedAndServedAgainAfterItIsPluggedAnew() async throws {
        let store = try await StoreWithGuest("xbm")
        try await withCleanup {
            let (dom0, guest, logger) = (store.dom0, store.guest, store.logger)
            let manager = XenbusBackendManager(factory: RecordingFactory(refused: [7]), store: dom0, backendDomain: .dom0, logger: logger)
            try await manager.start()
            let device = XenbusDevice(type: "vif", id: 0, frontend: DomainID(1))

            /// Plugs `device`, runs its frontend until both ends are Connected.
            func plug() async throws -> (XenbusEndpoint, Task<Void, any Error>) {
                try await XenbusToolstack.create(device, on: dom0)
                let frontend = XenbusEndpoint(role: .frontend, store: guest, path: device.frontendPath,
                                              peerPath: device.backendPath, driver: RecordingDriver(), logger: logger)
                let run = Task { try await frontend.run() }
                try await frontend.connected(timeout: .seconds(60))
                try await #require(manager.endpoint(for: device)).connected(timeout: .seconds(60))
                return (frontend, run)
            }

            var (frontend, run) = try await plug()
            #expect(manager.entries.map(\.device) == [device])

            // Stopped on purpose: the frontend sees it close, and it stays down until resumed.
            await manager.stop(device, timeout: .seconds(60))
            #expect(manager.driver(for: device) == nil)
            await manager.resume(device)
            // The frontend closed before the backend's endpoint ended: this waits for a new session.
            try await frontend.connected(timeout: .seconds(60))
            try await #require(manager.endpoint(for: device)).connected(timeout: .seconds(60))

            // Removed by the toolstack: the device ends; plugged again under its name, it is served again.
            let backend = try #require(manager.endpoint(for: device))
            frontend.requestClose()
            let first = run
            try await withTimeout(60) { try await first.value }
            try await XenbusToolstack.remove(device, on: dom0)
            for await _ in backend.states() {}  // ends when its run() returned
            #expect(await eventually { manager.entries.isEmpty })
            (frontend, run) = try await plug()

            // A device the factory refuses stays down, with the reason in its `error` key.
            let refused = XenbusDevice(type: "vif", id: 7, frontend: DomainID(1))
            try await XenbusToolstack.create(refused, on: dom0)
            var reason: String?
            let deadline = Date().addingTimeInterval(minimumDeadline)
            while reason == nil, Date() < deadline {
                reason = try await dom0.readIfPresent(refused.backendPath + "/error")
                if reason == nil { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(reason?.contains("no such device here") == true, "\(reason ?? "no error key")")
            #expect(manager.driver(for: refused) == nil)

            await manager.shutdown(timeout: .seconds(60))
            #expect(manager.entries.isEmpty)
            frontend.requestClose()
            let second = run
            try await withTimeout(60) { try await second.value }
        } cleanup: {
            await store.stop()
        }
    }

    /// Keys written inside a device already served (a backend's features, its state) say
    /// nothing about which devices exist: the manager lists the tree again only for a
    /// change that may add or remove one.
    @Test func keysInsideAServedDeviceDoNotListTheTree() async throws {
        let base = "/tmp/xbm-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", logger: logger)
        try server.start()
        try await withCleanup {
            let dom0 = try XenStoreClient(socketPath: base + ".sock")
            let counted = ListingCounter(try XenStoreClient(socketPath: base + ".sock"))
            try await XenbusToolstack.createDomainHome(DomainID(1), on: dom0)
            let manager = XenbusBackendManager(factory: RecordingFactory(refused: []), store: counted, backendDomain: .dom0, logger: logger)
            try await manager.start()
            defer { manager.closeAll() }
            let first = XenbusDevice(type: "vif", id: 0, frontend: DomainID(1))
            try await XenbusToolstack.create(first, on: dom0)
            #expect(await eventually(60) { manager.driver(for: first) != nil })
            let before = counted.listings
            for i in 0..<40 { try await dom0.write(first.backendPath + "/key\(i)", "\(i)") }
            // A second device: served only once the manager has taken every event before it.
            let second = XenbusDevice(type: "vif", id: 1, frontend: DomainID(1))
            try await XenbusToolstack.create(second, on: dom0)
            #expect(await eventually(60) { manager.driver(for: second) != nil })
            // The second device's creation lists the tree once or twice; forty keys would list it eighty times.
            #expect(counted.listings - before <= 8, "\(counted.listings - before) listings")
        } cleanup: {
            await stopOffThePool(server)
        }
    }
}
