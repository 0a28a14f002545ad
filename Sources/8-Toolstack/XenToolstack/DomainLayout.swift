import XenABI
import XenBus
import XenNetProtocol
import XenStore

/// One node the toolstack writes: its path, value and, where libxl sets them,
/// permissions (else the node inherits its parent's, as xenstored does).
public struct StoreNode: Hashable, Sendable {
    /// The absolute path.
    public var path: String
    /// The value written.
    public var value: String
    /// Permissions set after the write, or nil to inherit the parent's.
    public var permissions: XenStorePermissions?

    /// A node from its parts.
    public init(_ path: String, _ value: String, _ permissions: XenStorePermissions? = nil) {
        self.path = path
        self.value = value
        self.permissions = permissions
    }
}

/// A split device with the keys libxl writes in each half.
public struct DeviceLayout: Hashable, Sendable {
    /// The device (class, id, both domains).
    public var device: XenbusDevice
    /// Keys of the frontend directory beyond `backend`, `backend-id` and `state`.
    public var frontendKeys: [String: String]
    /// Keys of the backend directory beyond `frontend`, `frontend-id`, `online` and `state`.
    public var backendKeys: [String: String]
}

/// The store layout of a domain as libxl writes it (`libxl__domain_make` in
/// libxl_create.c, `libxl__build_post` in libxl_dom.c, the device adds in libxl_disk.c
/// and libxl_nic.c; docs/misc/xenstore-paths.pandoc names each path).
///
/// Permissions, in libxl's words: *roperm* is owned by dom0 and readable by the
/// domain; *rwperm* is owned by the domain (dom0 keeps every right). The home
/// (`/local/domain/N`, roperm), its `domid` and `device`/`data` directories are made
/// by the hypervisor daemon when it creates the domain (`XenbusToolstack.createDomainHome`);
/// ``domain(_:name:uuid:memoryMiB:startTime:)`` lists the rest.
public enum DomainLayout {
    /// `/vm/UUID`.
    public static func vmPath(uuid: String) -> String { "/vm/" + uuid }

    /// The domain's nodes beyond its home: `name`, `vm`, `memory/static-max` and
    /// `memory/target` (KiB), `control` (roperm) with `shutdown`, `feature-poweroff`,
    /// `feature-reboot`, `feature-suspend` and `sysrq` (rwperm: the guest answers in
    /// them) and the platform features; `drivers`, `feature`, `attr`, `error` (rwperm);
    /// and `/vm/UUID` (roperm) with `uuid`, `name`, `start_time`.
    public static func domain(_ id: DomainID, name: String, uuid: String, memoryMiB: Int, startTime: Double) -> [StoreNode] {
        let home = XenStorePath.home(of: id)
        let roperm = XenStorePermissions(owner: .dom0, grants: [.init(.read, id)])
        let rwperm = XenStorePermissions(owner: id)
        let vm = vmPath(uuid: uuid)
        let kib = String(memoryMiB * 1024)
        var nodes = [
            StoreNode(vm, "", roperm),
            StoreNode(vm + "/uuid", uuid),
            StoreNode(vm + "/name", name),
            StoreNode(vm + "/start_time", startTimeText(startTime)),
            StoreNode(home + "/vm", vm),
            StoreNode(home + "/name", name),
            StoreNode(home + "/memory/static-max", kib),
            StoreNode(home + "/memory/target", kib),
            StoreNode(home + "/control", "", roperm),
            StoreNode(home + "/control/platform-feature-multiprocessor-suspend", "1"),
            StoreNode(home + "/control/platform-feature-xs_reset_watches", "1"),
        ]
        for key in ["shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"] {
            nodes.append(StoreNode(home + "/control/" + key, "", rwperm))
        }
        for dir in ["drivers", "feature", "attr", "error"] { nodes.append(StoreNode(home + "/" + dir, "", rwperm)) }
        return nodes
    }

    /// A disk as libxl_disk.c writes it. Frontend: `virtual-device` (the vdev's number),
    /// `device-type`. Backend: `params` (the target), `mode` (`r` or `w`: libxl writes `w`
    /// for `w!` too, the `!` only skips the toolstack's sharing check), `type` (`phy`: libxl's
    /// backend for raw targets), `dev` (the vdev's name), `device-type`, `removable`,
    /// `bootable`, `discard-enable`; and xenpv's `engine` and `cache` where the spec names them.
    public static func disk(_ spec: DiskSpec, domain: DomainID) -> DeviceLayout {
        var back = [
            "params": spec.target, "mode": spec.access == .readOnly ? "r" : "w", "type": "phy", "dev": spec.vdev.name,
            "device-type": "disk", "removable": "0", "bootable": "1",
            "discard-enable": spec.discard == false ? "0" : "1",
        ]
        if let engine = spec.engine { back["engine"] = engine.rawValue }
        if let cache = spec.cache { back["cache"] = cache.rawValue }
        return DeviceLayout(
            device: XenbusDevice(type: "vbd", id: spec.vdev.number, frontend: domain),
            frontendKeys: ["virtual-device": String(spec.vdev.number), "device-type": "disk"], backendKeys: back)
    }

    /// A vif as libxl_nic.c writes it. Frontend: `handle`, `mac`. Backend: `handle`,
    /// `mac`, `type` (`vif`), `script`, and where given `bridge`, `ip` (blank-separated),
    /// `vifname`, `rate` (`BYTES,MICROSECONDS`).
    public static func vif(_ spec: VifSpec, index: UInt32, domain: DomainID, mac: MACAddress) -> DeviceLayout {
        var back = ["handle": String(index), "mac": mac.description, "type": "vif", "script": spec.script.rawValue]
        if let bridge = spec.bridge { back["bridge"] = bridge }
        if !spec.ip.isEmpty { back["ip"] = spec.ip.map(\.description).joined(separator: " ") }
        if let name = spec.vifname { back["vifname"] = name }
        if let rate = spec.rate { back["rate"] = "\(rate.bytesPerInterval),\(rate.intervalMicroseconds)" }
        return DeviceLayout(
            device: XenbusDevice(type: "vif", id: index, frontend: domain),
            frontendKeys: ["handle": String(index), "mac": mac.description], backendKeys: back)
    }

    /// A MAC address in Xen's range 00:16:3e, the rest random, as libxl assigns one.
    public static func randomMAC() -> MACAddress {
        var g = SystemRandomNumberGenerator()
        return MACAddress(0x00, 0x16, 0x3e, UInt8(truncatingIfNeeded: g.next() & 0x7f), g.next(), g.next())
    }
}

/// `seconds` with two decimals, as libxl writes `start_time` (`%lu.%02d`).
func startTimeText(_ seconds: Double) -> String {
    let centi = UInt64(exactly: (Swift.max(0, Swift.min(seconds, 1e15)) * 100).rounded(.down)) ?? 0
    let frac = centi % 100
    return "\(centi / 100).\(frac < 10 ? "0" : "")\(frac)"
}
