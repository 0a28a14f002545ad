import Logging
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenStore

/// netback for one driver domain: serves every vif the toolstack creates
/// under `/local/domain/<self>/backend/vif`, each through its own handshake
/// and queue thread, until the device goes away.
public final class NetBackend: Sendable {
    private let hypervisor: any Hypervisor
    private let store: any XenStoreConnection
    private let attach: AttachmentFactory
    private let logger: Logger
    private let state = Locked(State())

    private struct State {
        /// Devices with a task, connected or still setting up.
        var claimed: Set<VifIdentity> = []
        var served: [VifIdentity: (device: NetBackendDevice, endpoint: XenbusEndpoint)] = [:]
    }

    /// `attach` makes each vif's attachment, e.g. a TAP on a bridge:
    /// `{ id, features in try TapAttachment(name: id.interfaceName, bridge: "xenbr0", offloads: features.tapOffloads) }`.
    public init(hypervisor: any Hypervisor, store: any XenStoreConnection, logger: Logger = Logger(label: "netback"),
                attach: @escaping AttachmentFactory) {
        self.hypervisor = hypervisor
        self.store = store
        self.attach = attach
        self.logger = logger
    }

    /// `/local/domain/<self>/backend/vif`
    public var root: String { XenStorePath.home(of: hypervisor.domainID) + "/backend/vif" }

    /// The vifs being served and their state, for listings.
    public var vifs: [(identity: VifIdentity, state: XenbusState, counters: VifCounters?)] {
        state.withLock { $0.served.map { ($0.key, $0.value.endpoint.state, $0.value.device.counters) } }
            .sorted { ($0.identity.frontend, $0.identity.id) < ($1.identity.frontend, $1.identity.id) }
    }

    /// Serves devices until cancelled; each new `<fe>/<id>` directory starts
    /// a device task, which ends when the device closes for good.
    public func run() async throws {
        let watch = try await store.watchEvents(root)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                await DeviceStatistics.publish(to: store, root: DeviceStatistics.root(of: hypervisor.domainID) + "/vif") {
                    self.state.withLock { s in
                        s.served.compactMap { id, entry in
                            entry.device.statistics.map { ("\(id.frontend.rawValue)/\(id.id)", $0) }
                        }
                    }
                }
            }
            for await _ in watch {
                for identity in try await listDevices() where claim(identity) {
                    group.addTask { [self] in await serve(identity) }
                }
            }
            group.cancelAll()
        }
    }

    /// Asks every vif to close; their tasks end as the handshakes finish.
    public func closeAll() {
        for (_, entry) in state.withLock({ $0.served }) { entry.endpoint.requestClose() }
    }

    private func listDevices() async throws -> [VifIdentity] {
        var found: [VifIdentity] = []
        for fe in (try? await store.directory(root)) ?? [] {
            guard let domid = UInt16(fe) else { continue }
            for id in (try? await store.directory(root + "/" + fe)) ?? [] {
                if let n = UInt32(id) { found.append(VifIdentity(frontend: DomainID(domid), id: n)) }
            }
        }
        return found
    }

    /// Reserves `identity` for one serving task; false if it has one.
    private func claim(_ identity: VifIdentity) -> Bool {
        state.withLock { $0.claimed.insert(identity).inserted }
    }

    private func serve(_ identity: VifIdentity) async {
        let path = root + "/\(identity.frontend.rawValue)/\(identity.id)"
        defer { state.withLock { s in s.claimed.remove(identity); s.served.removeValue(forKey: identity) } }
        guard let peerPath = try? await store.readIfPresent(path + "/" + XenbusKey.frontend) else {
            // A device the toolstack is removing right now: nothing to serve.
            logger.debug("\(identity): no frontend key under \(path)")
            return
        }
        let endpointBox = EndpointBox()
        let device = NetBackendDevice(identity: identity, path: path, peerPath: peerPath, hypervisor: hypervisor,
                               store: store, attach: attach, logger: logger) { _ in
            // A broken ring resets this device: Closing, then a new session
            // once the frontend starts one (it re-shares its rings).
            endpointBox.endpoint?.requestClose()
            endpointBox.endpoint?.requestReconnect()
        }
        let endpoint = XenbusEndpoint(role: .backend, store: store, path: path, peerPath: peerPath,
                                      driver: device, logger: logger)
        endpointBox.endpoint = endpoint
        state.withLock { $0.served[identity] = (device, endpoint) }
        do { try await endpoint.run() } catch { logger.error("\(identity): \(error)") }
        await device.disconnect()
    }
}

/// Lets a device reach the endpoint that drives it, which is made after it.
private final class EndpointBox: @unchecked Sendable {
    // @unchecked: set once, before the device can connect; read after.
    var endpoint: XenbusEndpoint?
}
