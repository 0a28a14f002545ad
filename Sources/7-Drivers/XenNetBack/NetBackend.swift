import Logging
import XenABI
import XenBus
import XenHypervisor
import XenStore

/// netback for one driver domain: a `XenbusBackendManager` over
/// `/local/domain/<self>/backend/vif` that serves every vif the toolstack creates with a
/// ``NetBackendDevice``, each through its own handshake and queue thread, until the
/// device goes away.
public final class NetBackend: Sendable {
    /// The manager serving every vif: entries, endpoints, stop and resume per device.
    public let devices: XenbusBackendManager<VifFactory>

    /// `attach` makes each vif's attachment, e.g. a TAP on a bridge:
    /// `{ id, features in try TapAttachment(name: id.interfaceName, bridge: "xenbr0", offloads: features.tapOffloads,
    /// queues: features.queues) }`. Every vif offers `maxQueues` queues (`multi-queue-max-queues`,
    /// clamped to 1...``NetBackendDevice/queueLimit``; by default a queue per CPU).
    public init(hypervisor: any Hypervisor, store: any XenStoreConnection, logger: Logger = Logger(label: "netback"),
                maxQueues: Int = NetBackendDevice.defaultMaxQueues, attach: @escaping AttachmentFactory) {
        devices = XenbusBackendManager(factory: VifFactory(hypervisor: hypervisor, store: store, attach: attach,
                                                           maxQueues: maxQueues, logger: logger),
                                       store: store, backendDomain: hypervisor.domainID, logger: logger)
    }

    /// `/local/domain/<self>/backend/vif`
    public var root: String { devices.root }

    /// The vifs being served and their state, for listings.
    public var vifs: [(identity: VifIdentity, state: XenbusState, counters: VifCounters?)] {
        devices.entries.map { ($0.driver.identity, $0.endpoint.state, $0.driver.counters) }
    }

    /// The endpoint walking vif `identity`'s handshake, while it is served.
    public func endpoint(for identity: VifIdentity) -> XenbusEndpoint? {
        devices.endpoint(for: XenbusDevice(type: "vif", id: identity.id, frontend: identity.frontend,
                                           backend: devices.factory.hypervisor.domainID))
    }

    /// Serves devices until cancelled; then every device's endpoint stops where it is and
    /// its rings are released before this returns.
    public func run() async throws { try await devices.run() }

    /// Asks every vif to close; they stay closed, and their tasks end as the handshakes finish.
    public func closeAll() { devices.closeAll() }
}

/// How netback makes a vif: a ``NetBackendDevice`` whose broken ring resets the device
/// (Closing, then a new session once the frontend starts one with new rings).
public struct VifFactory: XenbusBackendDeviceFactory {
    let hypervisor: any Hypervisor
    let store: any XenStoreConnection
    let attach: AttachmentFactory
    let maxQueues: Int
    let logger: Logger

    /// "vif", the device class in `backend/vif/<domid>/<devid>`.
    public var deviceType: String { "vif" }

    /// Makes the vif's driver; a ring the frontend breaks resets the device (Closing, then a
    /// new session when the frontend offers new rings). Never throws.
    public func makeDevice(_ device: XenbusDevice, frontendPath: String, control: XenbusDeviceControl) async throws -> NetBackendDevice {
        NetBackendDevice(identity: VifIdentity(frontend: device.frontendDomain, id: device.id), path: device.backendPath,
                         peerPath: frontendPath, hypervisor: hypervisor, store: store, attach: attach, maxQueues: maxQueues,
                         logger: logger) { _ in
            control.requestClose()
            control.requestReconnect()
        }
    }

    /// The device's ``NetBackendDevice/statistics``.
    public func statistics(of device: NetBackendDevice) -> [(String, UInt64)]? { device.statistics }
}
