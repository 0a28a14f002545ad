import XenABI
import XenStore

/// The devices of one class a guest has, as the toolstack plugs and unplugs them while
/// the guest runs: what Linux's frontend bus (`xenbus_probe_frontend`) does with its
/// watch on `device`, for one class.
///
/// The guest's `device/<type>` directory is the guest's own (the toolstack writes each
/// device into it in one transaction, and the guest may write there too), so its
/// listing is read as untrusted: a name that is not a device number is skipped, and a
/// device counts only once its `backend` key names this device's own backend directory
/// (``XenstoreValue/backendPath(_:key:of:)``), which also tells the backend's domain.
public struct FrontendHotplug: Sendable {
    /// A device that appeared in, or left, the guest's `device/<type>` directory.
    public enum Change: Hashable, Sendable {
        /// The toolstack plugged this device: start its frontend.
        case added(XenbusDevice)
        /// Its directory is gone: the frontend's endpoint closes by itself.
        case removed(XenbusDevice)
    }

    /// The most devices of one class followed at once; more are not reported.
    public static let maximumDevices = 256

    let store: any XenStoreConnection
    let type: String
    let domain: DomainID

    /// Devices of class `type` (`vbd`, `vif`) of `domain`, read through `store` (a
    /// connection speaking as that domain, or dom0).
    public init(store: any XenStoreConnection, type: String, domain: DomainID) {
        self.store = store
        self.type = type
        self.domain = domain
    }

    /// `/local/domain/<domain>/device/<type>`
    public var directory: String { "\(XenStorePath.home(of: domain))/device/\(type)" }

    /// The devices there now, by number.
    public func current() async -> [XenbusDevice] {
        let names = (try? await store.directory(directory)) ?? []
        var devices: [XenbusDevice] = []
        for name in names.prefix(Self.maximumDevices) {
            guard let id = try? XenstoreValue.decimal(name, key: directory, in: UInt32(0)...UInt32.max) else { continue }
            let device = XenbusDevice(type: type, id: id, frontend: domain)
            let key = device.frontendPath + "/" + XenbusKey.backend
            guard let text = try? await store.readIfPresent(key),
                  let found = try? XenstoreValue.backendPath(text, key: key, of: device) else { continue }
            devices.append(found)
        }
        return devices.sorted { $0.id < $1.id }
    }

    /// Every device there when called, as `.added`, then each change as it happens.
    /// Ending the iteration removes the watch.
    /// - Throws: what setting the watch throws.
    public func changes() async throws(XenStoreError) -> AsyncStream<Change> {
        let events = try await store.watchEvents(directory)
        let watcher = self
        return AsyncStream { continuation in
            let task = Task {
                var known: [UInt32: XenbusDevice] = [:]
                // A watch fires once when set, then on every change below the directory.
                for await _ in events {
                    let now = await watcher.current()
                    let ids = Set(now.map(\.id))
                    for (id, device) in known.sorted(by: { $0.key < $1.key }) where !ids.contains(id) {
                        known[id] = nil
                        continuation.yield(.removed(device))
                    }
                    for device in now where known[device.id] == nil {
                        known[device.id] = device
                        continuation.yield(.added(device))
                    }
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
