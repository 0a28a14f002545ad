import Logging
import XenABI
import XenLocks
import XenStore

/// What one device class (vbd, vif) plugs into a ``XenbusBackendManager``: its name under
/// `backend/`, how to make one device's driver, and how to let go of one.
public protocol XenbusBackendDeviceFactory: Sendable {
    /// The backend half of one device, run under a ``XenbusEndpoint``.
    associatedtype Device: XenbusDeviceDriver

    /// The device class, the `<type>` of `backend/<type>/<domid>/<devid>`: "vbd", "vif".
    var deviceType: String { get }

    /// Makes the driver of a device the toolstack finished writing. `frontendPath` is the
    /// device's `frontend` key; `control` lets the driver close or reset its own device
    /// (a frontend that broke its ring). A throw leaves that device down until its directory
    /// is removed or it is resumed, with the error in its `error` key.
    func makeDevice(_ device: XenbusDevice, frontendPath: String, control: XenbusDeviceControl) async throws -> Device

    /// Lets go of whatever the device still holds, once its endpoint finished (or, in a
    /// shutdown, did not finish in time). The default calls `disconnect()`.
    func closeDevice(_ device: Device) async

    /// The figures `xenpv top` shows for the device (see ``DeviceStatistics``), while it
    /// has any. The default publishes none.
    func statistics(of device: Device) -> [(String, UInt64)]?
}

extension XenbusBackendDeviceFactory {
    /// Disconnects the device.
    public func closeDevice(_ device: Device) async { await device.disconnect() }
    /// Publishes nothing.
    public func statistics(of device: Device) -> [(String, UInt64)]? { nil }
}

/// Lets a device's driver act on its own handshake. It exists before the endpoint that
/// drives the device, so a request made before that endpoint runs is dropped.
public final class XenbusDeviceControl: Sendable {
    /// The device this control acts on.
    public let device: XenbusDevice
    private let endpoint = Locked<XenbusEndpoint?>(nil)

    init(device: XenbusDevice) { self.device = device }

    func attach(_ e: XenbusEndpoint) { endpoint.withLock { $0 = e } }

    /// Closes the device (the frontend sees Closing, then Closed); it stays down.
    public func requestClose() { endpoint.withLock { $0 }?.requestClose() }

    /// Lets a closed device connect again once its frontend starts a new session; after
    /// ``requestClose()`` this resets the device instead of closing it for good.
    public func requestReconnect() { endpoint.withLock { $0 }?.requestReconnect() }
}

/// One backend domain's device manager for one device class, the same for every class:
/// watches `/local/domain/<self>/backend/<type>`, and for each `<domid>/<devid>` the
/// toolstack finished writing (its `frontend` key is set) makes a device with the factory
/// and runs it under a ``XenbusEndpoint`` until it closes for good.
///
/// A device that closed by itself (its frontend went away, its driver closed it, or the
/// factory could not make it) stays down until the toolstack removes its directory, so a
/// device plugged again under the same name is served again. One stopped with
/// ``stop(_:timeout:)`` stays down until ``resume(_:)``. Waits are driven by store watch
/// events and the devices' own tasks; none polls.
public final class XenbusBackendManager<Factory: XenbusBackendDeviceFactory>: Sendable {
    /// The device class's factory, which makes and closes each device's driver.
    public let factory: Factory
    /// `/local/domain/<self>/backend/<type>`
    public let root: String
    private let store: any XenStoreConnection
    private let backendDomain: DomainID
    private let logger: Logger
    private let state = Locked<State>(State())

    /// A running device: its driver, the endpoint walking its handshake, the task running both.
    public struct Entry: Sendable {
        /// The device as the toolstack laid it out.
        public let device: XenbusDevice
        /// The driver the factory made for it.
        public let driver: Factory.Device
        /// The endpoint walking its handshake.
        public let endpoint: XenbusEndpoint
        let task: Task<Void, Never>
    }

    struct State: Sendable {
        /// Keyed by backend directory; nil while a device is being made.
        var running: [String: Entry?] = [:]
        /// Stopped on purpose: not made again until resumed.
        var stopped: Set<String> = []
        /// Closed by themselves: not made again until their directory goes.
        var closed: Set<String> = []
        /// Running devices whose directory a rescan found gone: not held once they end.
        var removed: Set<String> = []
        /// False after a shutdown or cancel: nothing new is made.
        var open = true
        var watcher: Task<Void, Never>?
        var publisher: Task<Void, Never>?
    }

    /// Creates a manager for `factory`'s device class under `backendDomain`'s `backend`
    /// directory; it watches nothing until ``start()`` or ``run()``.
    public init(factory: Factory, store: any XenStoreConnection, backendDomain: DomainID, logger: Logger) {
        self.factory = factory
        self.store = store
        self.backendDomain = backendDomain
        self.logger = logger
        root = XenStorePath.home(of: backendDomain) + "/backend/" + factory.deviceType
    }

    /// Starts watching; devices already present are served at once. Each device's
    /// figures are published once a second (``DeviceStatistics``) for `xenpv top`.
    public func start() async throws {
        let watch = try await store.watchEvents(root)
        let watcher = Task { [self] in
            for await event in watch where mayChangeDevices(event.path) { await rescan() }
        }
        let publisher = Task { [self] in
            await DeviceStatistics.publish(to: store, root: DeviceStatistics.root(of: backendDomain) + "/" + factory.deviceType) {
                self.entries.compactMap { e in
                    self.factory.statistics(of: e.driver).map { ("\(e.device.frontendDomain.rawValue)/\(e.device.id)", $0) }
                }
            }
        }
        state.withLock {
            $0.watcher = watcher
            $0.publisher = publisher
        }
        await rescan()
    }

    /// Serves devices until the calling task is cancelled or the store's watch ends; then
    /// cancels every device's task (see ``cancel()``) and returns once they ended.
    public func run() async throws {
        try await start()
        if let watcher = state.withLock({ $0.watcher }) {
            await withTaskCancellationHandler { await watcher.value } onCancel: { watcher.cancel() }
        }
        await cancel()
    }

    /// The running devices, ordered by frontend domain and device id.
    public var entries: [Entry] {
        state.withLock { $0.running.values.compactMap { $0 } }
            .sorted { ($0.device.frontendDomain, $0.device.id) < ($1.device.frontendDomain, $1.device.id) }
    }

    /// The driver serving `device`, if it is running.
    public func driver(for device: XenbusDevice) -> Factory.Device? { entry(device)?.driver }

    /// The endpoint walking `device`'s handshake, if it is running: await its
    /// ``XenbusEndpoint/connected(timeout:)`` to know the backend serves the rings.
    public func endpoint(for device: XenbusDevice) -> XenbusEndpoint? { entry(device)?.endpoint }

    private func entry(_ device: XenbusDevice) -> Entry? {
        state.withLock { $0.running[device.backendPath] ?? nil }
    }

    /// Closes one device (the frontend sees Closing, then Closed) and keeps it closed
    /// until ``resume(_:)``; waits, at most `timeout`, for its endpoint to finish.
    public func stop(_ device: XenbusDevice, timeout: Duration = .seconds(10)) async {
        guard let entry = state.withLock({ s -> Entry? in
            s.stopped.insert(device.backendPath)
            return s.running[device.backendPath] ?? nil
        }) else { return }
        entry.endpoint.requestClose()
        await Self.wait(for: [entry.task], timeout: timeout)
    }

    /// Serves a stopped (or self-closed) device again: a new handshake from Initialising.
    public func resume(_ device: XenbusDevice) async {
        state.withLock { s in
            s.stopped.remove(device.backendPath)
            s.closed.remove(device.backendPath)
        }
        await rescan()
    }

    /// Asks every running device to close; each stays down, and its task ends as its
    /// handshake finishes.
    public func closeAll() {
        for e in entries { e.endpoint.requestClose() }
    }

    /// Stops watching and closes every device, waiting at most `timeout` for their
    /// handshakes; a device whose endpoint did not finish is closed by the factory anyway.
    public func shutdown(timeout: Duration = .seconds(10)) async {
        let entries = state.withLock { s -> [Entry] in
            s.open = false
            s.watcher?.cancel()
            s.watcher = nil
            s.publisher?.cancel()
            s.publisher = nil
            s.stopped.formUnion(s.running.keys)
            return s.running.values.compactMap { $0 }
        }
        for e in entries { e.endpoint.requestClose() }
        await Self.wait(for: entries.map(\.task), timeout: timeout)
        // An endpoint that did not finish in time still holds mappings: release them. One
        // that finished was closed by its own task, which also took it out of `running`.
        let unfinished = state.withLock { s in entries.filter { s.running[$0.device.backendPath] != nil } }
        for e in unfinished { await factory.closeDevice(e.driver) }
    }

    /// Stops watching and cancels every device's task (each endpoint stops where it is
    /// and its device is closed); returns once they ended.
    public func cancel() async {
        let tasks = state.withLock { s -> [Task<Void, Never>] in
            s.open = false
            s.watcher?.cancel()
            s.watcher = nil
            s.publisher?.cancel()
            s.publisher = nil
            return s.running.values.compactMap { $0?.task }
        }
        for t in tasks { t.cancel() }
        for t in tasks { await t.value }
    }

    /// Whether a change at `path` may add or remove a device. A key inside a device already
    /// known (served, being made, stopped or closed) cannot: its directory's own removal fires
    /// at the directory. Without this filter every key a backend writes (its features, its
    /// state) cost two directory listings, competing with the handshake it is part of.
    private func mayChangeDevices(_ path: String) -> Bool {
        guard path.hasPrefix(root + "/") else { return true }
        let parts = path.dropFirst(root.count + 1).split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return true }
        let dir = "\(root)/\(parts[0])/\(parts[1])"
        return state.withLock { s in s.running[dir] == nil && !s.stopped.contains(dir) && !s.closed.contains(dir) }
    }

    /// Lists `<root>/<frontend>/<id>` and makes each device not yet served; forgets the
    /// self-closed devices whose directory went.
    private func rescan() async {
        guard state.withLock({ $0.open }) else { return }
        guard let frontends = try? await store.directory(root) else { return }
        var present: Set<String> = []
        for fe in frontends {
            guard let feID = UInt16(fe), let ids = try? await store.directory("\(root)/\(fe)") else { continue }
            for id in ids {
                guard let n = UInt32(id) else { continue }
                let device = XenbusDevice(type: factory.deviceType, id: n, frontend: DomainID(feID), backend: backendDomain)
                present.insert(device.backendPath)
                if claim(device.backendPath) { await launch(device) }
            }
        }
        state.withLock { s in
            s.closed.formIntersection(present)
            s.removed.formUnion(s.running.keys.filter { !present.contains($0) })
        }
    }

    /// Reserves a directory for one launch; false if it is served, stopped or closed.
    private func claim(_ dir: String) -> Bool {
        state.withLock { s in
            guard s.open, s.running[dir] == nil, !s.stopped.contains(dir), !s.closed.contains(dir) else { return false }
            s.running[dir] = .some(nil)
            return true
        }
    }

    private func launch(_ device: XenbusDevice) async {
        let dir = device.backendPath
        // Only a device the toolstack finished writing (its frontend path is set).
        guard let frontendPath = try? await store.readIfPresent(dir + "/" + XenbusKey.frontend) else {
            state.withLock { _ = $0.running.removeValue(forKey: dir) }
            return
        }
        let control = XenbusDeviceControl(device: device)
        let driver: Factory.Device
        do {
            driver = try await factory.makeDevice(device, frontendPath: frontendPath, control: control)
        } catch {
            logger.error("\(device): \(error)")
            try? await store.write(dir + "/error", "\(error)")
            await closedByItself(dir)
            return
        }
        let endpoint = XenbusEndpoint(role: .backend, store: store, path: dir, peerPath: frontendPath,
                                      driver: driver, logger: logger)
        control.attach(endpoint)
        state.withLock { s in
            // Created under the lock, so it cannot remove its entry before it is recorded.
            let task = Task { [self] in
                do { try await endpoint.run() } catch { logger.error("\(device): \(error)") }
                await factory.closeDevice(driver)
                await closedByItself(dir)
            }
            s.running[dir] = Entry(device: device, driver: driver, endpoint: endpoint, task: task)
        }
    }

    /// Keeps a device that closed by itself down while its directory lasts. The directory is
    /// checked while the device is still listed as running, so a removal after the check
    /// either is marked by a rescan before the device is let go, or finds it held and
    /// forgets the hold. A device found removed is not held, and is looked for again: the
    /// toolstack may have plugged it anew while it was ending.
    private func closedByItself(_ dir: String) async {
        let present = (try? await store.readIfPresent(dir + "/" + XenbusKey.frontend)) != nil
        let removed = state.withLock { s -> Bool in
            s.running.removeValue(forKey: dir)
            if s.removed.remove(dir) != nil || !present { return true }
            s.closed.insert(dir)
            return false
        }
        if removed { await rescan() }
    }

    /// Returns once every task ended or `timeout` passed, whichever is first; holds no thread.
    private static func wait(for tasks: [Task<Void, Never>], timeout: Duration) async {
        guard !tasks.isEmpty else { return }
        let resumed = Locked(false)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            @Sendable func finish() {
                if resumed.withLock({ r in defer { r = true }; return !r }) { c.resume() }
            }
            let timer = Task {
                try? await Task.sleep(for: timeout)
                finish()
            }
            Task {
                for t in tasks { await t.value }
                timer.cancel()
                finish()
            }
        }
    }
}
