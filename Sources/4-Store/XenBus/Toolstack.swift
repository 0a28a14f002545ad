import XenABI
import XenStore

/// One split device as the toolstack lays it out in xenstore.
public struct XenbusDevice: Hashable, Sendable, CustomStringConvertible {
    /// The device class: "vbd", "vif", …
    public var type: String
    /// The device id within its class (for a disk, the encoded vdev such as 51712).
    public var id: UInt32
    /// The guest domain that runs the frontend half.
    public var frontendDomain: DomainID
    /// The domain that runs the backend half (dom0 unless a driver domain serves it).
    public var backendDomain: DomainID

    /// Names a device of class `type` with number `id` between `frontend` and `backend`.
    public init(type: String, id: UInt32, frontend: DomainID, backend: DomainID = .dom0) {
        self.type = type
        self.id = id
        self.frontendDomain = frontend
        self.backendDomain = backend
    }

    /// `/local/domain/<fe>/device/<type>/<id>`
    public var frontendPath: String { "\(XenStorePath.home(of: frontendDomain))/device/\(type)/\(id)" }
    /// `/local/domain/<be>/backend/<type>/<fe>/<id>`
    public var backendPath: String {
        "\(XenStorePath.home(of: backendDomain))/backend/\(type)/\(frontendDomain.rawValue)/\(id)"
    }
    /// `<type>/<id> <frontend>→<backend>`, for logs.
    public var description: String { "\(type)/\(id) \(frontendDomain)→\(backendDomain)" }
}

/// The toolstack's part of XenBus: creating and removing device pairs with the usual keys and
/// permissions (frontend directory owned by the frontend and readable by the backend; backend
/// directory owned by the backend and readable by the frontend).
public enum XenbusToolstack {
    /// Creates a domain's home readable by it, and its `device` (where its frontends
    /// find their devices) and `data` directories owned by it.
    public static func createDomainHome(_ domain: DomainID, on store: some XenStoreOperations) async throws(XenStoreError) {
        let home = XenStorePath.home(of: domain)
        try await store.mkdir(home)
        try await store.setPermissions(home, XenStorePermissions(owner: .dom0, grants: [.init(.read, domain)]))
        // As libxl does: the guest reads its own id (`xenstore-read domid`); it cannot change it.
        try await store.write(home + "/domid", "\(domain.rawValue)")
        // As libxl does: `device` for the frontends, `data` for the guest's own use.
        for dir in ["device", "data"] {
            try await store.mkdir(home + "/" + dir)
            try await store.setPermissions(home + "/" + dir, XenStorePermissions(owner: domain))
        }
    }

    /// Writes both halves of `device` in one transaction: the frontend's `backend`,
    /// `backend-id`, `state`; the backend's `frontend`, `frontend-id`, `online`, `state`; plus
    /// the extra keys given. Fails with `EEXIST` if either directory already exists.
    public static func create(
        _ device: XenbusDevice, on store: any XenStoreConnection,
        frontendKeys: [String: String] = [:], backendKeys: [String: String] = [:]
    ) async throws {
        try await store.inTransaction { tx in
            // Requests without an order between them go out together: a restore runs this
            // while the guest is paused, and every round trip is part of its downtime.
            let fe = device.frontendDomain, be = device.backendDomain
            let feClass = XenStorePath.parent(of: device.frontendPath), beClass = XenStorePath.parent(of: device.backendPath)
            async let frontendThere = tx.exists(device.frontendPath)
            async let backendThere = tx.exists(device.backendPath)
            async let feClassThere = tx.exists(feClass)
            async let beClassThere = tx.exists(beClass)
            for (p, there) in [(device.frontendPath, try await frontendThere), (device.backendPath, try await backendThere)] where there {
                throw XenStoreError(.exists, "\(p) already exists")
            }
            // Each directory (its class directory too, if missing) with its permissions set
            // before anything is written in it: a class directory made here belongs to the
            // domain that enumerates it.
            var permissions = [(device.frontendPath, XenStorePermissions(owner: fe, grants: [.init(.read, be)])),
                               (device.backendPath, XenStorePermissions(owner: be, grants: [.init(.read, fe)]))]
            if try await !feClassThere { permissions.append((feClass, XenStorePermissions(owner: fe))) }
            if try await !beClassThere { permissions.append((beClass, XenStorePermissions(owner: be))) }
            async let frontendMade: Void = tx.mkdir(device.frontendPath)
            async let backendMade: Void = tx.mkdir(device.backendPath)
            try await frontendMade
            try await backendMade
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (dir, perms) in permissions { group.addTask { try await tx.setPermissions(dir, perms) } }
                try await group.waitForAll()
            }

            var feKeys = frontendKeys
            feKeys[XenbusKey.backend] = device.backendPath
            feKeys[XenbusKey.backendID] = String(be.rawValue)
            feKeys[XenbusKey.state] = XenbusState.initialising.xenstoreValue
            var beKeys = backendKeys
            beKeys[XenbusKey.frontend] = device.frontendPath
            beKeys[XenbusKey.frontendID] = String(fe.rawValue)
            beKeys[XenbusKey.online] = "1"
            beKeys[XenbusKey.state] = XenbusState.initialising.xenstoreValue
            try await tx.writeAll(feKeys.sorted { $0.key < $1.key }.map { (device.frontendPath + "/" + $0.key, $0.value) }
                                  + beKeys.sorted { $0.key < $1.key }.map { (device.backendPath + "/" + $0.key, $0.value) })
        }
    }

    /// Asks for an orderly unplug: `online` 0 tells the backend to close when the frontend has.
    public static func requestUnplug(_ device: XenbusDevice, on store: some XenStoreOperations) async throws(XenStoreError) {
        try await store.write(device.backendPath + "/" + XenbusKey.online, "0")
    }

    /// Removes both halves in one transaction (the peer sees its `state` vanish).
    public static func remove(_ device: XenbusDevice, on store: any XenStoreConnection) async throws {
        try await store.inTransaction { tx in
            try await tx.rm(device.frontendPath)
            try await tx.rm(device.backendPath)
        }
    }
}
