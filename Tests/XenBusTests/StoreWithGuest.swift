import Foundation
import Logging
import XenABI
import XenBus
import XenStore
import XenStoreServer

/// A store daemon with dom0's socket and guest domain 1's, a client on each, and the
/// guest's home made as the toolstack makes it. Stops the daemon when dropped.
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

    deinit { server.stop() }
}
