import Foundation
import Logging
import TestSupport
import Testing
import XenABI
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

/// The generic device manager serves, stops, resumes and re-serves devices, driven by
/// store watches (no test here waits on a clock except as a bound).
@Suite(.timeLimit(.minutes(5)), .serialized)
struct XenbusBackendManagerTests {
    @Test func aDeviceIsServedStoppedResumedAndServedAgainAfterItIsPluggedAnew() async throws {
        let base = "/tmp/xbm-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-d1.sock", DomainID(1))], logger: logger)
        try server.start()
        defer { server.stop() }
        let dom0 = try XenStoreClient(socketPath: base + ".sock")
        let guest = try XenStoreClient(socketPath: base + "-d1.sock")
        try await XenbusToolstack.createDomainHome(DomainID(1), on: dom0)
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
        let deadline = Date().addingTimeInterval(60)
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
    }
}
