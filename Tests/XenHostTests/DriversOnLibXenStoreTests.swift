import Foundation
import Glibc
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
@testable import XenHost
import XenNetBack
import XenNetFront
import XenSimulator
import XenStore
import XenStoreServer

/// The unchanged net drivers with both ends' stores on Xen's libxenstore
/// (grants and events stay simulated: this machine has no /dev/xen).
@Suite(.timeLimit(.minutes(5)), .serialized)
struct DriversOnLibXenStoreTests {
    @Test func netbackAndNetfrontHandshakeThroughLibxenstore() async throws {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 1024)
        let base = "/tmp/xpv-libxsdrv-\(UUID().uuidString.prefix(8))"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-g.sock", guest.domainID)], logger: quiet)
        try server.start()
        try await withCleanup {
            let dom0Store = try StoreEnvironment.open(socket: base + ".sock")
            let guestStore = try StoreEnvironment.open(socket: base + "-g.sock")
            defer {
                dom0Store.close()
                guestStore.close()
            }

            let received = ReceivedFrames()
            let backend = NetBackend(hypervisor: hv.dom0, store: dom0Store, logger: quiet) { _, _ in
                MemoryAttachment { frame, _ in received.add(Array(frame)); return true }
            }
            let backendTask = Task { try await backend.run() }
            defer { backendTask.cancel() }
            let device = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
            try await XenbusToolstack.createDomainHome(guest.domainID, on: dom0Store)
            try await XenbusToolstack.create(device, on: dom0Store)

            let port = PacketPort()
            let frontend = NetFrontendDriver(hypervisor: guest, store: guestStore, path: device.frontendPath, port: port, logger: quiet)
            let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: device.frontendPath,
                                          peerPath: device.backendPath, driver: frontend, logger: quiet)
            let frontendTask = Task { try await endpoint.run() }
            // Bounded, but generous: libxenstore's calls run off the cooperative
            // pool, and under a parallel test run on two cores they wait their turn.
            try await endpoint.connected(timeout: .seconds(60))
            // The frontend saw netback's Connected, so netback runs an endpoint for the vif.
            try await #require(backend.endpoint(for: VifIdentity(frontend: guest.domainID, id: 0))).connected(timeout: .seconds(60))
            #expect(endpoint.state == .connected && backend.vifs.first?.state == .connected)
            try await port.send([UInt8](repeating: 0x5a, count: 1000))
            _ = await eventually { received.count != 0 }
            #expect(received.count == 1)

            endpoint.requestClose()
            try await frontendTask.value
            try await XenbusToolstack.remove(device, on: dom0Store)
            _ = await eventually { backend.vifs.isEmpty }
            #expect(hv.shutdown().isEmpty)
        } cleanup: {
            // `stop()` waits for the server's loop thread to end: on a thread of its own.
            _ = await onThread { server.stop(timeout: minimumDeadline) }
        }
    }
}

final class ReceivedFrames: @unchecked Sendable {
    private let lock = NSLock()
    private var frames: [[UInt8]] = []
    func add(_ f: [UInt8]) { lock.lock(); frames.append(f); lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return frames.count }
}
