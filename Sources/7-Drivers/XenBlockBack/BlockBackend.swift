import Logging
import XenABI
import XenBus
import XenHypervisor
import XenStore

/// One dom0 process serving many disks: a `XenbusBackendManager` over
/// `/local/domain/<self>/backend/vbd` that runs a ``BlockBackendDevice`` for each device
/// that appears. `disk` opens the device's storage from its backend directory (e.g. its
/// `params` key).
public final class BlockBackend: Sendable {
    /// Opens the storage of one vbd: called with the device, its backend directory (where
    /// the toolstack wrote `params`, `mode`, …) and the store. A throw keeps that device down
    /// with ``BlockBackendError/Code/noDisk`` in its `error` key.
    public typealias DiskProvider = @Sendable (XenbusDevice, _ backendDirectory: String, any XenStoreConnection) async throws -> BlockBackendDisk

    /// The manager serving every vbd: entries, endpoints, stop and resume per device.
    public let devices: XenbusBackendManager<VbdFactory>
    /// The bounce pages every device's queues take and give back (see ``BouncePools``).
    public let bouncePools: BouncePools

    /// Creates the backend for `hypervisor`'s domain; it serves nothing until ``start()``.
    /// Every device gets `options`; `disk` opens each one's storage.
    public init(store: any XenStoreConnection, hypervisor: any Hypervisor, options: BlockBackendOptions = BlockBackendOptions(),
                logger: Logger = Logger(label: "blkback"), disk: @escaping DiskProvider) {
        let pools = BouncePools()
        bouncePools = pools
        devices = XenbusBackendManager(
            factory: VbdFactory(store: store, hypervisor: hypervisor, provider: disk, options: options, bouncePools: pools, logger: logger),
            store: store, backendDomain: hypervisor.domainID, logger: logger)
    }

    /// Starts watching; devices already present are served at once.
    public func start() async throws { try await devices.start() }

    /// The driver serving `device`, if it is running.
    public func driver(for device: XenbusDevice) -> BlockBackendDevice? { devices.driver(for: device) }

    /// Closes one device (the frontend sees Closing, then Closed) and keeps it closed
    /// until ``resume(_:)``; waits (bounded) for its endpoint to finish.
    public func stop(_ device: XenbusDevice, timeout: Double = 10) async {
        await devices.stop(device, timeout: .seconds(timeout))
    }

    /// Serves a stopped device again (a new handshake from Initialising).
    public func resume(_ device: XenbusDevice) async { await devices.resume(device) }

    /// Stops watching and closes every device (bounded).
    public func shutdown(timeout: Double = 10) async { await devices.shutdown(timeout: .seconds(timeout)) }
}

/// How blkback makes a vbd: opens its disk, and closes the device for good when its
/// frontend breaks a ring.
public struct VbdFactory: XenbusBackendDeviceFactory {
    let store: any XenStoreConnection
    let hypervisor: any Hypervisor
    let provider: BlockBackend.DiskProvider
    let options: BlockBackendOptions
    let bouncePools: BouncePools
    let logger: Logger

    /// "vbd", the device class in `backend/vbd/<domid>/<devid>`.
    public var deviceType: String { "vbd" }

    /// Opens the device's disk through the provider and makes its driver, which closes the
    /// device for good when a queue reports a broken ring.
    /// - Throws: ``BlockBackendError`` `.noDisk` when the provider throws.
    public func makeDevice(_ device: XenbusDevice, frontendPath: String, control: XenbusDeviceControl) async throws -> BlockBackendDevice {
        let dir = device.backendPath
        let disk: BlockBackendDisk
        do { disk = try await provider(device, dir, store) } catch {
            throw BlockBackendError(.noDisk, "disk", underlying: error)
        }
        return BlockBackendDevice(device: device, store: store, hypervisor: hypervisor, disk: disk, options: options,
                                  bouncePools: bouncePools, logger: logger) { [logger, store] error in
            logger.error("\(device): ring failure, closing: \(error)")
            let reason = "ring: \(error)"
            Task {
                try? await store.write(dir + "/error", reason)
                control.requestClose()
            }
        }
    }

    /// The device's ``BlockBackendDevice/statistics``.
    public func statistics(of device: BlockBackendDevice) -> [(String, UInt64)]? { device.statistics }
}
