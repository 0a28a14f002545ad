import Logging
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenStore

/// One dom0 process serving many disks: watches `/local/domain/<self>/backend/vbd` and
/// runs a ``BlockBackendDevice`` under a ``XenbusEndpoint`` for each device that appears.
/// `disk` opens the device's storage from its backend directory (e.g. its `params` key).
public final class BlockBackend: Sendable {
    public typealias DiskProvider = @Sendable (XenbusDevice, _ backendDirectory: String, any XenStoreConnection) async throws -> BlockBackendDisk

    private let store: any XenStoreConnection
    private let hypervisor: any Hypervisor
    private let provider: DiskProvider
    private let options: BlockBackendOptions
    private let logger: Logger
    private let root: String
    private let state = Locked<State>(State())

    struct Entry: Sendable {
        let endpoint: XenbusEndpoint
        let driver: BlockBackendDevice
        let task: Task<Void, Never>
    }

    struct State: Sendable {
        var devices: [String: Entry] = [:]
        /// Devices stopped on purpose: not restarted by a rescan until resumed.
        var held: Set<String> = []
        var watcher: Task<Void, Never>?
        var publisher: Task<Void, Never>?
    }

    public init(store: any XenStoreConnection, hypervisor: any Hypervisor, options: BlockBackendOptions = BlockBackendOptions(),
                logger: Logger = Logger(label: "blkback"), disk: @escaping DiskProvider) {
        self.store = store
        self.hypervisor = hypervisor
        self.provider = disk
        self.options = options
        self.logger = logger
        root = XenStorePath.home(of: hypervisor.domainID) + "/backend/vbd"
    }

    /// Starts watching; devices already present are served at once.
    public func start() async throws {
        let watch = try await store.watchEvents(root)
        let task = Task { [self] in
            for await _ in watch {
                await rescan()
            }
        }
        // Each disk's counters, once a second, for `xenpv top` in any process.
        let publisher = Task { [self] in
            await DeviceStatistics.publish(to: store, root: DeviceStatistics.root(of: hypervisor.domainID) + "/vbd") {
                self.state.withLock { s in
                    s.devices.values.compactMap { e -> (path: String, values: [(String, UInt64)])? in
                        let queues = e.driver.queues
                        guard !queues.isEmpty else { return nil }
                        func sum(_ k: (BlockQueueCounters) -> UInt64) -> UInt64 { queues.reduce(0) { $0 + k($1.counters) } }
                        return ("\(e.driver.device.frontendDomain.rawValue)/\(e.driver.device.id)", [
                            ("requests", sum { $0.requests.value }), ("segments", sum { $0.segments.value }),
                            ("bytes", sum { $0.bytes.value }), ("notifies", sum { $0.notifies.value }),
                            ("sleeps", sum { $0.sleeps.value }), ("ring_fill", UInt64(queues.reduce(0) { $0 + $1.ringFill })),
                            ("ring_size", UInt64(queues.reduce(0) { $0 + $1.ringSize })),
                            ("dropped", sum { $0.refused.value + $0.badGrants.value + $0.storageErrors.value }),
                        ])
                    }
                }
            }
        }
        state.withLock {
            $0.watcher = task
            $0.publisher = publisher
        }
        await rescan()
    }

    /// The driver serving `device`, if it is running.
    public func driver(for device: XenbusDevice) -> BlockBackendDevice? {
        state.withLock { $0.devices[device.backendPath]?.driver }
    }

    /// Closes one device (the frontend sees Closing, then Closed) and keeps it closed
    /// until ``resume(_:)``; waits (bounded) for its endpoint to finish.
    public func stop(_ device: XenbusDevice, timeout: Double = 10) async {
        guard let entry = state.withLock({ s -> Entry? in
            s.held.insert(device.backendPath)
            return s.devices[device.backendPath]
        }) else { return }
        entry.endpoint.requestClose()
        let deadline = ContinuousClock.now + .seconds(timeout)
        while state.withLock({ $0.devices[device.backendPath] != nil }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Serves a stopped device again (a new handshake from Initialising).
    public func resume(_ device: XenbusDevice) async {
        state.withLock { _ = $0.held.remove(device.backendPath) }
        await rescan()
    }

    /// Stops watching and closes every device (bounded).
    public func shutdown(timeout: Double = 10) async {
        let entries = state.withLock { s -> [Entry] in
            s.watcher?.cancel()
            s.watcher = nil
            s.publisher?.cancel()
            s.publisher = nil
            s.held.formUnion(s.devices.keys)
            return Array(s.devices.values)
        }
        for e in entries { e.endpoint.requestClose() }
        let deadline = ContinuousClock.now + .seconds(timeout)
        while state.withLock({ !$0.devices.isEmpty }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        // An endpoint that did not finish still holds mappings: release them.
        for e in entries { await e.driver.disconnect() }
    }

    /// Lists `backend/vbd/<frontend>/<id>` and starts an endpoint for each new device.
    private func rescan() async {
        guard let frontends = try? await store.directory(root) else { return }
        for fe in frontends {
            guard let feID = UInt16(fe), let ids = try? await store.directory("\(root)/\(fe)") else { continue }
            for id in ids {
                guard let vdev = UInt32(id) else { continue }
                let device = XenbusDevice(type: "vbd", id: vdev, frontend: DomainID(feID), backend: hypervisor.domainID)
                let dir = device.backendPath
                let skip = state.withLock { $0.devices[dir] != nil || $0.held.contains(dir) }
                if skip { continue }
                // Only a device the toolstack finished writing (its frontend path is set).
                guard (try? await store.readIfPresent(dir + "/" + XenbusKey.frontend)) != nil else { continue }
                await launch(device)
            }
        }
    }

    private func launch(_ device: XenbusDevice) async {
        let dir = device.backendPath
        let disk: BlockBackendDisk
        do {
            disk = try await provider(device, dir, store)
        } catch {
            logger.error("\(device): no disk: \(error)")
            try? await store.write(dir + "/error", "disk: \(error)")
            state.withLock { _ = $0.held.insert(dir) }
            return
        }
        let endpointBox = EndpointBox()
        let driver = BlockBackendDevice(device: device, store: store, hypervisor: hypervisor, disk: disk, options: options,
                                        logger: logger) { [logger, store] error in
            logger.error("\(device): ring failure, closing: \(error)")
            let reason = "ring: \(error)"
            Task {
                try? await store.write(dir + "/error", reason)
                endpointBox.endpoint?.requestClose()
            }
        }
        let endpoint = XenbusEndpoint(role: .backend, store: store, path: dir, peerPath: device.frontendPath,
                                      driver: driver, logger: logger)
        endpointBox.endpoint = endpoint
        let inserted = state.withLock { s -> Bool in
            guard s.devices[dir] == nil else { return false }
            let task = Task { [self] in
                do { try await endpoint.run() } catch { logger.error("\(device): \(error)") }
                await driver.disconnect()
                state.withLock { s in
                    s.devices[dir] = nil
                    // A device that closed by itself (frontend gone, ring failure) stays down.
                    s.held.insert(dir)
                }
            }
            s.devices[dir] = Entry(endpoint: endpoint, driver: driver, task: task)
            return true
        }
        if !inserted { return }
    }
}

/// Lets a driver's failure callback reach its endpoint, created after it.
final class EndpointBox: Sendable {
    private let stored = Locked<XenbusEndpoint?>(nil)
    var endpoint: XenbusEndpoint? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}
