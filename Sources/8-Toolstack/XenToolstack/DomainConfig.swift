import Foundation

/// What to do with a domain when it shuts down or reboots (`on_poweroff`, `on_reboot`).
public enum DomainAction: String, Hashable, Sendable, CaseIterable {
    /// `destroy`: tear the domain down.
    case destroy
    /// `restart`: destroy it and start a new one from the same config.
    case restart
    /// `preserve`: keep the dead domain for inspection.
    case preserve
    /// `rename-restart`: keep the old domain under a new name and start a new one.
    case renameRestart = "rename-restart"
}

/// A setting the config gave that xl knows but that means nothing here.
public struct IgnoredSetting: Hashable, Sendable {
    /// The key (`vcpus`).
    public var key: String
    /// Its line.
    public var line: Int

    /// An ignored setting.
    public init(key: String, line: Int) {
        self.key = key
        self.line = line
    }
}

/// A domain's configuration, read from an xl.cfg(5) file: what a `xenpv create`
/// needs to start a guest program with its disks and NICs.
///
/// Keys read:
///
/// | key | type | meaning |
/// | --- | --- | --- |
/// | `name` | string, required | the domain's name: 1 … 64 printable ASCII bytes, no blank or `/`, not all digits (it is stored as the value of `/local/domain/N/name`, and a name that read as a number would be taken for a domain id) |
/// | `memory` | number (or a quoted decimal, as xl allows), 128 if absent | MiB, 1 … 1048576 |
/// | `kernel` | string, required | the guest program's path, as written |
/// | `extra` | string | its arguments, split by ``ShellWords`` |
/// | `disk` | list of strings | ``DiskSpec``s |
/// | `vif` | list of strings | ``VifSpec``s |
/// | `on_poweroff`, `on_reboot` | string | a ``DomainAction``; `destroy` and `restart` if absent |
///
/// Keys xl knows that mean nothing here (``ignoredKeys``, e.g. `vcpus`, `type`,
/// `builder`, `uuid`) are accepted and listed in ``ignored``. Keys xl knows that would
/// change what the guest gets (`ramdisk`, `cmdline`, `root`, `bootloader`, `pci`, …)
/// are refused as unsupported; every other key is refused as unknown. Each refusal
/// names the file, line and key.
public struct DomainConfig: Hashable, Sendable {
    /// The domain's name.
    public var name: String
    /// Memory in MiB.
    public var memory: Int
    /// The guest program's path.
    public var kernel: String
    /// `extra` as written, or nil when absent.
    public var extra: String?
    /// `extra` split into arguments (empty when absent).
    public var arguments: [String]
    /// The disks, in config order.
    public var disks: [DiskSpec]
    /// The NICs, in config order.
    public var vifs: [VifSpec]
    /// What to do when the guest powers off.
    public var onPoweroff: DomainAction
    /// What to do when the guest reboots.
    public var onReboot: DomainAction
    /// The settings accepted but ignored, in file order.
    public var ignored: [IgnoredSetting]

    /// The memory given to a domain whose config has no `memory`.
    public static let defaultMemory = 128
    /// The most memory a config may ask for: 1 TiB, in MiB.
    public static let maximumMemory = 1 << 20
    /// The longest name accepted.
    public static let maximumNameLength = 64

    /// xl keys accepted and ignored: they tune a real hypervisor's scheduling,
    /// identity or device model, none of which exists for a guest program here.
    public static let ignoredKeys: Set<String> = [
        "vcpus", "maxvcpus", "maxmem", "type", "builder", "uuid", "cpus", "cpus_soft", "cpu_weight", "cpu_cap",
        "on_crash", "on_watchdog", "on_soft_reset", "localtime", "vnc", "sdl", "serial", "nographic", "pvh",
        "max_grant_frames", "max_maptrack_frames", "seclabel", "claim_mode",
    ]
    /// xl keys that would change what the guest gets and that XenPV cannot honour.
    public static let unsupportedKeys: Set<String> = [
        "ramdisk", "cmdline", "root", "bootloader", "bootloader_args", "pci", "vtpm", "channel", "p9", "vkb", "vfb",
        "usbctrl", "usbdev", "device_tree", "vdispl", "vsnd", "dtdev", "iomem", "ioports", "irqs", "shadow_memory",
    ]

    /// A configuration from its parts.
    public init(
        name: String, memory: Int = DomainConfig.defaultMemory, kernel: String, extra: String? = nil,
        arguments: [String] = [], disks: [DiskSpec] = [], vifs: [VifSpec] = [], onPoweroff: DomainAction = .destroy,
        onReboot: DomainAction = .restart, ignored: [IgnoredSetting] = []
    ) {
        self.name = name
        self.memory = memory
        self.kernel = kernel
        self.extra = extra
        self.arguments = arguments
        self.disks = disks
        self.vifs = vifs
        self.onPoweroff = onPoweroff
        self.onReboot = onReboot
        self.ignored = ignored
    }

    /// Reads and interprets the file at `path`; errors name its last path component.
    public init(contentsOfFile path: String) throws(DomainConfigError) {
        let fileName = (path as NSString).lastPathComponent
        let data: Data
        do {
            guard let handle = FileHandle(forReadingAtPath: path) else {
                throw DomainConfigError(.unreadable, "cannot open \(path)", fileName: fileName)
            }
            defer { try? handle.close() }
            data = try handle.read(upToCount: XLConfigFile.maximumSize + 1) ?? Data()
        } catch let error as DomainConfigError {
            throw error
        } catch {
            throw DomainConfigError(.unreadable, "cannot read \(path)", fileName: fileName, underlying: error)
        }
        try self.init(file: try XLConfigFile(parsing: [UInt8](data), fileName: fileName))
    }

    /// Parses and interprets `text`, naming `fileName` in errors.
    public init(parsing text: String, fileName: String) throws(DomainConfigError) {
        try self.init(file: try XLConfigFile(parsing: text, fileName: fileName))
    }

    /// Interprets a parsed file.
    public init(file: XLConfigFile) throws(DomainConfigError) {
        let fileName = file.fileName
        func fail(_ code: DomainConfigError.Code, _ message: String, _ setting: XLSetting) -> DomainConfigError {
            DomainConfigError(code, message, fileName: fileName, line: setting.line, key: setting.key)
        }
        func string(_ setting: XLSetting) throws(DomainConfigError) -> String {
            guard case .string(let text) = setting.value else {
                throw fail(.invalidValue, "expected a quoted string, found \(setting.value.kind)", setting)
            }
            return text
        }
        func strings(_ setting: XLSetting) throws(DomainConfigError) -> [(String, Int)] {
            guard case .list(let elements) = setting.value else {
                throw fail(.invalidValue, "expected a list of quoted strings [ '…', … ], found \(setting.value.kind)", setting)
            }
            var out: [(String, Int)] = []
            for (index, element) in elements.enumerated() {
                guard case .string(let text) = element.value else {
                    throw DomainConfigError(
                        .invalidValue, "expected a quoted string, found \(element.value.kind)", fileName: fileName,
                        line: element.line, key: "\(setting.key)[\(index)]")
                }
                out.append((text, element.line))
            }
            return out
        }
        func action(_ setting: XLSetting) throws(DomainConfigError) -> DomainAction {
            let text = try string(setting)
            guard let action = DomainAction(rawValue: text) else {
                let known = ["coredump-destroy", "coredump-restart", "soft-reset"].contains(text)
                throw fail(
                    known ? .unsupported : .invalidValue,
                    "\(quoted(text)) is \(known ? "not supported here" : "not an action"); use destroy, restart, preserve or rename-restart",
                    setting)
            }
            return action
        }

        var name: String?
        var memory = Self.defaultMemory
        var kernel: String?
        var extra: String?
        var arguments: [String] = []
        var disks: [DiskSpec] = []
        var vifs: [VifSpec] = []
        var onPoweroff = DomainAction.destroy
        var onReboot = DomainAction.restart
        var ignored: [IgnoredSetting] = []

        for setting in file.settings {
            switch setting.key {
            case "name":
                let text = try string(setting)
                guard !text.isEmpty, text.utf8.count <= Self.maximumNameLength,
                    text.utf8.allSatisfy({ Self.isNameByte($0) }),
                    !text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
                else {
                    throw fail(
                        .invalidValue,
                        "\(quoted(text)) is not a domain name; use 1 to \(Self.maximumNameLength) printable characters without blanks or /, not all digits",
                        setting)
                }
                name = text
            case "memory":
                // xl reads every single value as text and numbers with strtol, so a
                // quoted "128" is a number too; here decimal digits only.
                let value: Int64
                switch setting.value {
                case .number(let number): value = number
                case .string(let text) where !text.isEmpty && text.utf8.count <= 18 && text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }):
                    value = Int64(text) ?? 0
                default:
                    throw fail(.invalidValue, "expected a number of MiB, found \(setting.value.kind)", setting)
                }
                guard value > 0, value <= Int64(Self.maximumMemory) else {
                    throw fail(.invalidValue, "\(value) MiB is out of range; give 1 to \(Self.maximumMemory)", setting)
                }
                memory = Int(value)
            case "kernel":
                let text = try string(setting)
                guard !text.isEmpty, !text.utf8.contains(0) else {
                    throw fail(.invalidValue, "the kernel path is empty; give the guest program's path", setting)
                }
                kernel = text
            case "extra":
                let text = try string(setting)
                do {
                    arguments = try ShellWords.split(text)
                } catch {
                    throw error.located(fileName: fileName, line: setting.line, key: setting.key)
                }
                extra = text
            case "disk":
                for (index, (spec, line)) in try strings(setting).enumerated() {
                    let disk: DiskSpec
                    do {
                        disk = try DiskSpec(parsing: spec)
                    } catch {
                        throw error.located(fileName: fileName, line: line, key: "disk[\(index)]")
                    }
                    if let other = disks.firstIndex(where: { $0.vdev.number == disk.vdev.number }) {
                        throw DomainConfigError(
                            .duplicate, "vdev \(disk.vdev) is the same device as disk[\(other)]'s; give each disk its own vdev",
                            fileName: fileName, line: line, key: "disk[\(index)]")
                    }
                    disks.append(disk)
                }
            case "vif":
                for (index, (spec, line)) in try strings(setting).enumerated() {
                    do {
                        vifs.append(try VifSpec(parsing: spec))
                    } catch {
                        throw error.located(fileName: fileName, line: line, key: "vif[\(index)]")
                    }
                }
            case "on_poweroff":
                onPoweroff = try action(setting)
            case "on_reboot":
                onReboot = try action(setting)
            case let key where Self.ignoredKeys.contains(key):
                ignored.append(IgnoredSetting(key: key, line: setting.line))
            case let key where Self.unsupportedKeys.contains(key):
                throw fail(.unsupported, "xl's \(key) is not supported by XenPV; remove it", setting)
            default:
                throw fail(
                    .unknownKey,
                    "unknown key; XenPV reads name, memory, kernel, extra, disk, vif, on_poweroff, on_reboot", setting)
            }
        }
        guard let name else {
            throw DomainConfigError(.missing, "no name; add name = \"…\"", fileName: fileName, key: "name")
        }
        guard let kernel else {
            throw DomainConfigError(
                .missing, "no kernel; add kernel = \"/path/to/guest-program\"", fileName: fileName, key: "kernel")
        }
        self.init(
            name: name, memory: memory, kernel: kernel, extra: extra, arguments: arguments, disks: disks, vifs: vifs,
            onPoweroff: onPoweroff, onReboot: onReboot, ignored: ignored)
    }

    /// A byte a domain name may hold: printable ASCII, no blank, no `/`.
    static func isNameByte(_ b: UInt8) -> Bool {
        b > 0x20 && b < 0x7f && b != UInt8(ascii: "/")
    }
}
