import NBDProtocol
import Foundation
import Logging
import XenABI
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenBus
import XenHypervisor
import XenNetBack
import XenSimulator
import XenStore
import XenStoreServer

/// One process playing a whole Xen host on the embedded simulator: the
/// hypervisor, dom0's xenstored (with a socket per guest that speaks as that
/// guest, standing in for its xenstore ring) and dom0's backends: netback, and
/// blkback serving each vbd's image (its `params` key) through io_uring or libaio, or
/// the NBD export its `params` names (`nbd://…`, `nbd+unix://…`) through `NBDStorage`.
public final class EmbeddedHost: @unchecked Sendable {
    /// The simulated hypervisor; dom0 is the host's own domain.
    public let hypervisor = SimulatedHypervisor()
    /// dom0's connection to the embedded xenstored.
    public let store: XenStoreClient
    /// netback, serving every vif the toolstack creates.
    public let netBackend: NetBackend
    /// blkback, serving every vbd once ``startBlockBackend()`` ran.
    public let blockBackend: BlockBackend
    let server: XenStoreServer
    let directory: URL
    private var tasks: [Task<Void, Error>] = []
    private var guestSockets: [DomainID: String] = [:]
    private let logger: Logger

    /// Starts the store and the backends. `attach` makes each vif's NIC.
    public init(directory: URL, logger: Logger, attach: @escaping AttachmentFactory) throws {
        self.directory = directory
        self.logger = logger
        // Guests get ids 1, 2, …: give the first few their store sockets now.
        var extra: [(String, DomainID)] = []
        for id in 1 ... 4 {
            let path = directory.appendingPathComponent("xenstore-d\(id).sock").path
            extra.append((path, DomainID(UInt16(id))))
            guestSockets[DomainID(UInt16(id))] = path
        }
        let socket = directory.appendingPathComponent("xenstore.sock").path
        var quiet = logger
        quiet.logLevel = .warning
        server = XenStoreServer(socketPath: socket, extraSockets: extra, logger: quiet)
        try server.start()
        store = try XenStoreClient(socketPath: socket)
        netBackend = NetBackend(hypervisor: hypervisor.dom0, store: store, logger: quiet, attach: attach)
        let backend = netBackend
        tasks.append(Task { try await backend.run() })
        blockBackend = BlockBackend(store: store, hypervisor: hypervisor.dom0, logger: quiet) { _, dir, store in
            let path = try await store.read(dir + "/params")
            let readOnly = try await store.readIfPresent(dir + "/mode") == "r"
            if NBDURI.looksLikeURI(path) {
                // A remote export: its terms come from the server, each queue connects on its own.
                let uri = try NBDURI(parsing: path)
                let terms = try await NBDStorage.probe(uri)
                let ro = readOnly || terms.flags.contains(.readOnly)
                // Without multi-conn a flush covers only its own connection: one queue, one connection.
                return BlockBackendDisk(byteCount: terms.size, readOnly: ro, discard: terms.canDiscard && !ro,
                                        maxQueues: terms.flags.contains(.canMultiConn) ? .max : 1) {
                    try NBDStorage(uri: uri, readOnly: ro, queueDepth: 64)
                }
            }
            let fd = try FileDescriptor.open(FilePath(path), .readOnly)
            let size = try fd.closeAfter { try fd.seek(offset: 0, from: .end) }
            // io_uring where the kernel allows it and the file is not on tmpfs, else libaio.
            let engine = FileEngineKind.preferred(for: FilePath(path)).kind
            return BlockBackendDisk(byteCount: UInt64(size), readOnly: readOnly) {
                try engine.open(FilePath(path), readOnly: readOnly, directIO: .preferred, queueDepth: 64)
            }
        }
    }

    /// Starts serving block devices (they are found through the store).
    public func startBlockBackend() async throws {
        try await blockBackend.start()
    }

    /// The store as guest `domain` sees it.
    public func store(for domain: DomainID) throws -> XenStoreClient {
        guard let path = guestSockets[domain] else { throw XenStoreError(.invalid, "no store socket for \(domain)") }
        return try XenStoreClient(socketPath: path)
    }

    /// Creates a guest with its xenstore home.
    public func createGuest(frames: Int) async throws -> SimulatedDomain {
        let guest = try hypervisor.createDomain(frames: frames)
        try await XenbusToolstack.createDomainHome(guest.domainID, on: store)
        return guest
    }

    /// Stops the backends and the store; returns what the hypervisor found left.
    public func shutdown() async -> Leftovers {
        await blockBackend.shutdown()
        // Every vif's handshake finishes (its mappings and ports given back) before
        // the hypervisor counts what is left.
        await netBackend.devices.shutdown()
        for t in tasks { t.cancel() }
        for t in tasks { _ = try? await t.value }
        server.stop()
        return hypervisor.shutdown()
    }
}
