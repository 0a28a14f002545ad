import Foundation
import Logging
import TestSupport
import XenABI
import XenBus
import XenStore
import XenStoreServer

/// A store daemon with dom0's socket and guest domain 1's, a client on each, and the
/// guest's home made as the toolstack makes it. A test awaits ``stop()`` at its end (in
/// `withCleanup`); dropping it only tells the daemon to stop.
final class StoreWithGuest: Sendable {
    let guestID = DomainID(1)
    let server: XenStoreServer
    let dom0: XenStoreClient
    let guest: XenStoreClient
    let logger: Logger

    init(_ name: String) async throws {
        let base = "/tmp/\(name)-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        self.logger = logger
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-d1.sock", guestID)], logger: logger)
        try server.start()
        dom0 = try XenStoreClient(socketPath: base + ".sock")
        guest = try XenStoreClient(socketPath: base + "-d1.sock")
        try await XenbusToolstack.createDomainHome(guestID, on: dom0)
    }

    /// Stops the daemon and awaits its loop thread's end off the cooperative pool
    /// (`stopOffThePool`); whether it ended.
    @discardableResult
    func stop() async -> Bool { await stopOffThePool(server) }

    /// The last resort of a test that did not reach `stop()`: tells the loop to stop and
    /// waits for nothing (a deinit may run on a pool thread).
    deinit { server.stop(timeout: 0) }
}

/// Stops `server` and awaits its loop thread's end, for at most `minimumDeadline`, on a
/// thread of its own: `XenStoreServer.stop()` blocks until that thread has ended, which
/// must not hold a thread of the cooperative pool. Whether it ended.
@discardableResult
func stopOffThePool(_ server: XenStoreServer) async -> Bool {
    await onThread { server.stop(timeout: minimumDeadline) }
}
