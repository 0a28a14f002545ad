import Foundation
import XenABI
import XenBus
import XenNetProtocol
import XenSimulatorClient
import XenStore

/// A domain ``Toolstack/create(_:)`` made: what its program needs to join it.
public struct CreatedDomain: Hashable, Sendable {
    /// The domain's id.
    public var id: DomainID
    /// The token its program joins with (`XENPV_DOMAIN_TOKEN`).
    public var token: DomainToken
    /// The domain's UUID (`/vm/UUID`).
    public var uuid: String
    /// Its devices, in config order: the disks, then the vifs.
    public var devices: [XenbusDevice]
}

/// One line of `xenpv list`: a domain as the store describes it.
public struct DomainSummary: Hashable, Sendable {
    /// The domain's id.
    public var id: DomainID
    /// Its name (`Domain-0` for dom0, empty if the store has none).
    public var name: String
    /// `memory/target` in MiB (0 when absent or unreadable).
    public var memoryMiB: Int
    /// Seconds since `/vm/UUID/start_time` (0 when unknown).
    public var seconds: Double
    /// A pending `control/shutdown` request, if the key holds one.
    public var shutdownRequested: Bool
}

/// dom0's toolstack for a hypervisor daemon, as libxl is for Xen: creates a domain
/// from a ``DomainConfig`` with its store layout (``DomainLayout``) and devices, asks
/// it to shut down, destroys it.
///
/// It joins the daemon at `socketPath` as a dom0 process (the daemon's trust rules:
/// root, the daemon's user or its group) and speaks to the store through that
/// connection. Every wait is bounded by the caller's timeout.
public final class Toolstack: @unchecked Sendable {
    // @unchecked: immutable after init.
    /// The daemon's socket.
    public let socketPath: String
    let hypervisor: RemoteHypervisor
    /// The store, speaking as dom0.
    public var store: XenStoreClient { hypervisor.store }

    /// Joins the daemon at `socketPath` as dom0; `onDaemonLost` runs if the daemon goes away.
    /// - Throws: ``ToolstackError`` `.hypervisor` when the join fails.
    public init(socketPath: String, onDaemonLost: @escaping RemoteHypervisor.LostHandler = { _ in }) throws(ToolstackError) {
        self.socketPath = socketPath
        do { hypervisor = try RemoteHypervisor(socketPath: socketPath, as: .dom0, onDaemonLost: onDaemonLost) } catch {
            throw ToolstackError(.hypervisor, "cannot join the hypervisor at \(socketPath) as dom0", underlying: error)
        }
    }

    /// Leaves the daemon (the domains it created stay).
    public func close() { hypervisor.close() }

    /// Frames per MiB of guest memory.
    static let framesPerMiB = 256
    /// The most memory the simulated hypervisor gives a guest (262144 frames).
    public static let maximumMemoryMiB = 1024

    // MARK: Create

    /// Creates the domain `config` describes, with no device the daemon would plug:
    /// its layout as libxl writes it, each disk a vbd with its own `params`, each vif.
    /// Its program is not started here (see ``GuestProgram``); the domain waits for it
    /// (the daemon's pending lifetime). On any failure the domain is destroyed again.
    /// - Throws: ``ToolstackError``: `.nameInUse`, `.badDisk`, `.diskInUse`, `.hypervisor`, `.store`.
    public func create(_ config: DomainConfig) async throws(ToolstackError) -> CreatedDomain {
        guard config.memory <= Self.maximumMemoryMiB else {
            throw ToolstackError(.hypervisor, "memory \(config.memory) MiB is more than a simulated guest gets (\(Self.maximumMemoryMiB) MiB)")
        }
        if let other = await domains().first(where: { $0.name == config.name }) {
            throw ToolstackError(.nameInUse, "a domain named \(config.name.debugDescription) exists already (\(other.id))")
        }
        var targets: [DiskTarget] = []
        for (index, disk) in config.disks.enumerated() {
            do { targets.append(try DiskTarget(checking: disk.target)) } catch {
                throw ToolstackError(.badDisk, "disk[\(index)] (\(disk.vdev))", underlying: error)
            }
        }
        try await checkSharing(config.disks, targets)
        let id: DomainID
        let token: DomainToken
        do { (id, token) = try hypervisor.createDomain(frames: config.memory * Self.framesPerMiB, devices: []) } catch {
            throw ToolstackError(.hypervisor, "the hypervisor did not create the domain", underlying: error)
        }
        let uuid = UUID().uuidString.lowercased()
        do {
            let nodes = DomainLayout.domain(id, name: config.name, uuid: uuid, memoryMiB: config.memory,
                                            startTime: Date().timeIntervalSince1970)
            try await store.inTransaction { tx in
                for node in nodes {
                    try await tx.write(node.path, node.value)
                    if let perms = node.permissions { try await tx.setPermissions(node.path, perms) }
                }
            }
            var devices: [XenbusDevice] = []
            for disk in config.disks {
                let layout = DomainLayout.disk(disk, domain: id)
                try await XenbusToolstack.create(layout.device, on: store, frontendKeys: layout.frontendKeys,
                                                 backendKeys: layout.backendKeys)
                devices.append(layout.device)
            }
            for (index, vif) in config.vifs.enumerated() {
                let layout = DomainLayout.vif(vif, index: UInt32(index), domain: id, mac: vif.mac ?? DomainLayout.randomMAC())
                try await XenbusToolstack.create(layout.device, on: store, frontendKeys: layout.frontendKeys,
                                                 backendKeys: layout.backendKeys)
                devices.append(layout.device)
            }
            return CreatedDomain(id: id, token: token, uuid: uuid, devices: devices)
        } catch {
            try? hypervisor.destroyDomain(id)
            throw ToolstackError(.store, "writing \(id)'s layout", underlying: error)
        }
    }

    /// Refuses a `w` disk whose target another running domain has attached writable
    /// (`mode` `w` in dom0's backend directories), as the block hotplug script's sharing
    /// check does; `w!` skips the check.
    func checkSharing(_ disks: [DiskSpec], _ targets: [DiskTarget]) async throws(ToolstackError) {
        let wanted = zip(disks, targets).filter { $0.0.access == .readWrite }
        guard !wanted.isEmpty else { return }
        for attached in await writableAttachments() {
            for (disk, target) in wanted where target.identity == attached.identity {
                throw ToolstackError(
                    .diskInUse,
                    "\(disk.target) is attached read-write to \(attached.domain) already; give access=w! to share it writable")
            }
        }
    }

    /// The targets attached writable now, read from dom0's backend directories.
    func writableAttachments() async -> [(domain: DomainID, identity: DiskTarget.Identity)] {
        var found: [(DomainID, DiskTarget.Identity)] = []
        let base = "/local/domain/0/backend/vbd"
        for domain in (try? await store.directory(base)) ?? [] {
            guard let raw = UInt16(domain), raw > 0 else { continue }
            for dev in (try? await store.directory("\(base)/\(domain)")) ?? [] {
                let dir = "\(base)/\(domain)/\(dev)"
                guard let mode = try? await store.readIfPresent(dir + "/mode"), mode.contains("w"),
                    let params = try? await store.readIfPresent(dir + "/params"),
                    let target = try? DiskTarget(checking: params)
                else { continue }
                found.append((DomainID(raw), target.identity))
            }
        }
        return found
    }

    // MARK: Hotplug

    /// Plugs `disk` into the running domain `id`, as `xl block-attach` does: the same
    /// checks and keys as a disk of the config (the target, the sharing of a `w` disk),
    /// and a vdev the domain does not use yet. The guest sees a new device directory.
    /// - Throws: ``ToolstackError``: `.noSuchDomain`, `.badDisk`, `.diskInUse`, `.store`.
    public func attachDisk(_ disk: DiskSpec, to id: DomainID) async throws(ToolstackError) -> XenbusDevice {
        guard (try? await store.exists(XenStorePath.home(of: id))) == true else {
            throw ToolstackError(.noSuchDomain, "no guest domain \(id)")
        }
        let target = try DiskTarget(checking: disk.target)
        try await checkSharing([disk], [target])
        let layout = DomainLayout.disk(disk, domain: id)
        let backendThere = (try? await store.exists(layout.device.backendPath)) != false
        let frontendThere = (try? await store.exists(layout.device.frontendPath)) != false
        if backendThere || frontendThere {
            throw ToolstackError(.diskInUse, "\(id) has a \(disk.vdev) already")
        }
        do {
            try await XenbusToolstack.create(layout.device, on: store, frontendKeys: layout.frontendKeys, backendKeys: layout.backendKeys)
        } catch {
            throw ToolstackError(.store, "plugging \(disk.vdev) into \(id)", underlying: error)
        }
        return layout.device
    }

    /// Unplugs disk `vdev` of domain `id`, as `xl block-detach` does (see
    /// ``detach(_:timeout:force:)``).
    /// - Throws: ``ToolstackError`` `.noSuchDomain` when the domain has no such disk; `.store`.
    public func detachDisk(_ vdev: VirtualDiskDevice, from id: DomainID, timeout: Double, force: Bool = false) async throws(ToolstackError) {
        let device = XenbusDevice(type: "vbd", id: vdev.number, frontend: id)
        guard (try? await store.exists(device.backendPath)) == true else {
            throw ToolstackError(.noSuchDomain, "\(id) has no disk \(vdev)")
        }
        try await detach(device, timeout: timeout, force: force)
    }

    /// Plugs `vif` into the running domain `id`, as `xl network-attach` does: the next free
    /// devid, the spec's MAC or a random one in 00:16:3e, and the keys of a config's vif
    /// (`script`, `bridge`, `ip`, … in dom0's backend directory); the backend sets the
    /// host's side up as `script` says. The guest sees a new device directory.
    /// - Throws: ``ToolstackError``: `.noSuchDomain`, `.store`.
    public func attachVif(_ vif: VifSpec, to id: DomainID) async throws(ToolstackError) -> XenbusDevice {
        guard (try? await store.exists(XenStorePath.home(of: id))) == true else {
            throw ToolstackError(.noSuchDomain, "no guest domain \(id)")
        }
        var used: Set<UInt32> = []
        for dir in ["/local/domain/0/backend/vif/\(id.rawValue)", XenStorePath.home(of: id) + "/device/vif"] {
            for dev in (try? await store.directory(dir)) ?? [] { if let n = UInt32(dev) { used.insert(n) } }
        }
        var index: UInt32 = 0
        while used.contains(index) { index += 1 }
        let layout = DomainLayout.vif(vif, index: index, domain: id, mac: vif.mac ?? DomainLayout.randomMAC())
        do {
            try await XenbusToolstack.create(layout.device, on: store, frontendKeys: layout.frontendKeys, backendKeys: layout.backendKeys)
        } catch {
            throw ToolstackError(.store, "plugging vif \(index) into \(id)", underlying: error)
        }
        return layout.device
    }

    /// The vif of domain `id` that `text` names: its devid, or its MAC as dom0's backend
    /// directory holds it.
    /// - Throws: ``ToolstackError`` `.noSuchDevice`.
    public func vif(_ text: String, of id: DomainID) async throws(ToolstackError) -> XenbusDevice {
        let base = "/local/domain/0/backend/vif/\(id.rawValue)"
        let devids = ((try? await store.directory(base)) ?? []).compactMap(UInt32.init)
        if let n = UInt32(text), devids.contains(n) { return XenbusDevice(type: "vif", id: n, frontend: id) }
        if let wanted = MACAddress(text) {
            for n in devids {
                let mac = (try? await store.readIfPresent("\(base)/\(n)/mac")) ?? nil
                if let mac, MACAddress(mac) == wanted { return XenbusDevice(type: "vif", id: n, frontend: id) }
            }
        }
        throw ToolstackError(.noSuchDevice, "\(id) has no vif \(text.prefix(40).debugDescription) (give its devid or MAC)")
    }

    /// Unplugs vif `device`, as `xl network-detach` does (see ``detach(_:timeout:force:)``);
    /// the backend's close takes down what its hotplug set up.
    /// - Throws: ``ToolstackError`` `.store`.
    public func detachVif(_ device: XenbusDevice, timeout: Double, force: Bool = false) async throws(ToolstackError) {
        try await detach(device, timeout: timeout, force: force)
    }

    /// Unplugs `device`: sets the backend's `online` to 0 (the backend closes once the
    /// frontend has), waits at most `timeout` seconds for the backend to reach Closed (none
    /// with `force`), then removes both halves whatever state they are in; a backend sees
    /// its device vanish and lets go.
    /// - Throws: ``ToolstackError`` `.store`.
    public func detach(_ device: XenbusDevice, timeout: Double, force: Bool = false) async throws(ToolstackError) {
        if !force {
            try? await XenbusToolstack.requestUnplug(device, on: store)
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let state = (try? await store.readIfPresent(device.backendPath + "/state")) ?? nil
                if state == nil || state == XenbusState.closed.xenstoreValue { break }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        do { try await XenbusToolstack.remove(device, on: store) } catch {
            try? await store.rm(device.frontendPath)
            do { try await store.rm(device.backendPath) } catch {
                throw ToolstackError(.store, "removing \(device) of \(device.frontendDomain)", underlying: error)
            }
        }
        // No sweep afterwards: a backend still closing the device writes its `state` only
        // while the node exists (XenbusEndpoint, as Linux's xenbus_switch_state), so the
        // removal stays removed.
    }

    // MARK: Lookup

    /// Every domain the store lists under `/local/domain`, in id order.
    public func domains() async -> [DomainSummary] { await Self.domains(in: store) }

    /// Every domain `store` lists under `/local/domain`, in id order (any store
    /// connection: listing needs no dom0 join). Every value read is bounded before use.
    public static func domains(in store: some XenStoreOperations) async -> [DomainSummary] {
        let ids = ((try? await store.directory("/local/domain")) ?? []).compactMap(UInt16.init).sorted()
        var out: [DomainSummary] = []
        let now = Date().timeIntervalSince1970
        for raw in ids {
            let home = "/local/domain/\(raw)"
            let name = raw == 0 ? "Domain-0" : (((try? await store.readIfPresent(home + "/name")) ?? nil) ?? "")
            let kib = ((try? await store.readIfPresent(home + "/memory/target")) ?? nil).flatMap { Int($0.prefix(20)) } ?? 0
            var seconds = 0.0
            if let vm = (try? await store.readIfPresent(home + "/vm")) ?? nil, vm.hasPrefix("/vm/"),
                let start = ((try? await store.readIfPresent(vm + "/start_time")) ?? nil).flatMap({ Double($0.prefix(32)) }),
                start.isFinite, start <= now
            {
                seconds = now - start
            }
            let shutdown = ((try? await store.readIfPresent(home + "/" + GuestControl.shutdownKey)) ?? nil)
                .map { ShutdownRequest(rawValue: $0) != nil } ?? false
            out.append(DomainSummary(id: DomainID(raw), name: name, memoryMiB: max(0, kib / 1024), seconds: seconds,
                                     shutdownRequested: shutdown))
        }
        return out
    }

    /// The guest domain named `text`, by name or by id.
    /// - Throws: ``ToolstackError`` `.noSuchDomain`.
    public func resolve(_ text: String) async throws(ToolstackError) -> DomainSummary {
        try await Self.resolve(text, in: store)
    }

    /// The guest domain named `text` in `store`, by name or by id.
    /// - Throws: ``ToolstackError`` `.noSuchDomain`.
    public static func resolve(_ text: String, in store: some XenStoreOperations) async throws(ToolstackError) -> DomainSummary {
        let all = await domains(in: store)
        if let d = all.first(where: { $0.id.rawValue != 0 && $0.name == text }) { return d }
        if let raw = UInt16(text), raw != 0, let d = all.first(where: { $0.id.rawValue == raw }) { return d }
        throw ToolstackError(.noSuchDomain, "no guest domain \(text.prefix(80).debugDescription)")
    }

    // MARK: Shutdown and destroy

    /// Writes `request` to the domain's `control/shutdown` (dom0 may write the guest's key).
    /// - Throws: ``ToolstackError`` `.store`.
    public func requestShutdown(_ id: DomainID, _ request: ShutdownRequest) async throws(ToolstackError) {
        do { try await store.write(XenStorePath.home(of: id) + "/" + GuestControl.shutdownKey, request.rawValue) } catch {
            throw ToolstackError(.store, "writing \(id)'s control/shutdown", underlying: error)
        }
    }

    /// Whether `id` is gone: no domain in the daemon and no home in the store.
    public func isGone(_ id: DomainID) async -> Bool {
        let inDaemon = (try? hypervisor.report().domains.contains(id)) ?? true
        let inStore = (try? await store.exists(XenStorePath.home(of: id))) ?? true
        return !inDaemon && !inStore
    }

    /// Waits at most `timeout` seconds for `id` to be gone (``isGone(_:)``), looking every 50 ms.
    public func waitUntilGone(_ id: DomainID, timeout: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if await isGone(id) { return true }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return await isGone(id)
    }

    /// Destroys `id` as `xl destroy` does: removes its devices (both halves: each
    /// backend sees its device vanish and lets go of it), has the daemon destroy the
    /// domain (its process, if joined, loses the hypervisor), then waits at most
    /// `timeout` seconds until the domain, its home and `/vm` entry are gone.
    /// - Throws: ``ToolstackError`` `.timedOut` when something is left after `timeout`.
    public func destroy(_ id: DomainID, timeout: Double = 60) async throws(ToolstackError) {
        let vm = (try? await store.readIfPresent(XenStorePath.home(of: id) + "/vm")) ?? nil
        for device in await devices(of: id) {
            do { try await XenbusToolstack.remove(device, on: store) } catch {
                // The guest may have removed its own frontend half: the backend half goes all the same.
                try? await store.rm(device.frontendPath)
                try? await store.rm(device.backendPath)
            }
        }
        try? hypervisor.destroyDomain(id)
        guard await waitUntilGone(id, timeout: timeout) else {
            throw ToolstackError(.timedOut, "\(id) is still there after \(timeout) s")
        }
        if let vm, vm.hasPrefix("/vm/") { try? await store.rm(vm) }
    }

    /// The domain's devices, from dom0's backend directories (never a path the guest wrote).
    public func devices(of id: DomainID) async -> [XenbusDevice] {
        var out: [XenbusDevice] = []
        let base = "/local/domain/0/backend"
        for type in (try? await store.directory(base)) ?? [] {
            for dev in (try? await store.directory("\(base)/\(type)/\(id.rawValue)")) ?? [] {
                if let number = UInt32(dev) { out.append(XenbusDevice(type: type, id: number, frontend: id)) }
            }
        }
        return out
    }

    /// What the daemon holds now (for leftover checks).
    /// - Throws: ``ToolstackError`` `.hypervisor`.
    public func report() throws(ToolstackError) -> DaemonReport {
        do { return try hypervisor.report() } catch { throw ToolstackError(.hypervisor, "report", underlying: error) }
    }
}
