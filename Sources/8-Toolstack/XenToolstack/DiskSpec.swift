import NBDProtocol

/// How a guest may use a disk (xl-disk-configuration(5)'s `access`).
public enum DiskAccess: String, Hashable, Sendable, CaseIterable {
    /// `r` or `ro`: the guest only reads (blkback's `mode` is `r`).
    case readOnly = "r"
    /// `w` or `rw` (the default): the guest reads and writes.
    case readWrite = "w"
    /// `w!`: reads and writes even when the disk is attached writable elsewhere;
    /// the caller skips its sharing check.
    case readWriteShared = "w!"

    /// Every spelling xl accepts, for error messages.
    static let spellings = "r, ro, w, rw, w!"

    /// xl's spellings: `r`, `ro`, `w`, `rw`, `w!`.
    init?(xl text: Substring) {
        switch text {
        case "r", "ro": self = .readOnly
        case "w", "rw": self = .readWrite
        case "w!": self = .readWriteShared
        default: return nil
        }
    }
}

/// The image format of a disk. Only raw images are served here.
public enum DiskFormat: String, Hashable, Sendable {
    /// A raw image file or block device (`format=raw`, the default).
    case raw
}

/// One `disk = [ … ]` entry, per xl-disk-configuration(5).
///
/// Both forms are read:
/// - keyword form: `format=raw, vdev=xvda, access=rw, target=/path` (`target=`
///   consumes the rest of the spec, commas included, so it comes last);
/// - positional form: `target, format, vdev, access` in that order, each optional
///   and empty meaning the default (`/path/img,raw,xvda,rw`, `/path/img,,xvda`),
///   and the deprecated `PREFIX:target, vdev, access` where PREFIX is `file:`,
///   `phy:` or `raw:` and skips the format position (`file:/path/img,xvda,w`).
///
/// The forms mix: parameters without `=` that are not flags fill the positions not
/// yet given. Leading and trailing blanks around a parameter are dropped. A relative
/// target gets `/dev/` in front, as xl does, unless it is an NBD export's URI
/// (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`), which blkback serves
/// through its NBD engine (checked where the target is, by ``DiskTarget``). Flags:
/// `discard` and `no-discard`.
/// xenpv's own keys: `engine=io_uring` or `engine=libaio` (``DiskEngine``), and
/// `cache=none` or `cache=writeback` (``DiskCache``).
///
/// Refused: a format other than `raw` (qcow, qcow2, vhd, qed …), other prefixes
/// (`tap:`, `qcow2:`, …), `devtype=cdrom` and the `cdrom` flag and a `:cdrom`
/// vdev suffix, other keys (`backend`, `script`, `backendtype`, …), a parameter given
/// twice, no target, no vdev, more than four positional parameters, and `cache=` on an NBD
/// export (its cache is its server's).
public struct DiskSpec: Hashable, Sendable {
    /// The image file or block device.
    public var target: String
    /// The image format (always raw here).
    public var format: DiskFormat
    /// The device the guest sees.
    public var vdev: VirtualDiskDevice
    /// How the guest may use it; `.readWrite` by default.
    public var access: DiskAccess
    /// `discard` / `no-discard` if given: whether the guest may discard blocks;
    /// nil leaves it to the backend.
    public var discard: Bool?
    /// `engine=`: the storage engine blkback serves the image with; nil leaves it to the backend.
    public var engine: DiskEngine?
    /// `cache=`: whether blkback goes through the host's page cache; nil leaves it to the backend.
    public var cache: DiskCache?

    /// A disk spec from its parts.
    public init(
        target: String, format: DiskFormat = .raw, vdev: VirtualDiskDevice, access: DiskAccess = .readWrite,
        discard: Bool? = nil, engine: DiskEngine? = nil, cache: DiskCache? = nil
    ) {
        self.target = target
        self.format = format
        self.vdev = vdev
        self.access = access
        self.discard = discard
        self.engine = engine
        self.cache = cache
    }

    /// Parses one DISKSPEC string. The error has no location; ``DomainConfig`` adds it.
    public init(parsing spec: String) throws(DomainConfigError) {
        var target: Substring?
        var format: Substring?
        var vdev: Substring?
        var access: Substring?
        var discard: Bool?
        var engine: DiskEngine?
        var cache: DiskCache?
        var positionsUsed = 0  // 0 target, 1 format, 2 vdev, 3 access: the next free position
        var given: Set<String> = []

        func invalid(_ message: String) -> DomainConfigError { DomainConfigError(.invalidValue, message) }

        func give(_ name: String) throws(DomainConfigError) {
            guard given.insert(name).inserted else {
                throw DomainConfigError(.duplicate, "\(name) is given twice; give each parameter once")
            }
        }

        var rest = Substring(spec)
        while true {
            rest = rest.drop { $0 == " " || $0 == "\t" }
            if rest.hasPrefix("target=") {
                // `target=` takes the rest of the spec, commas and blanks included.
                try give("target")
                target = rest.dropFirst("target=".count)
                break
            }
            let comma = rest.firstIndex(of: ",")
            let parameter = rest[..<(comma ?? rest.endIndex)].trimmingBlanks()
            // An NBD URI's query (`?socket=`) holds a `=`: it is a positional target all the same.
            let isURI = NBDURI.looksLikeURI(String(parameter))
            if let equals = parameter.firstIndex(of: "="), !isURI {
                let key = parameter[..<equals]
                let value = parameter[parameter.index(after: equals)...]
                switch key {
                case "format":
                    try give("format")
                    format = value
                case "vdev":
                    try give("vdev")
                    vdev = value
                case "access":
                    try give("access")
                    access = value
                case "devtype":
                    try give("devtype")
                    guard value.isEmpty || value == "disk" else {
                        throw DomainConfigError(.unsupported, "devtype \(quoted(value)) is not supported; only disk is")
                    }
                case "engine":
                    try give("engine")
                    guard let parsed = DiskEngine(rawValue: String(value)) else {
                        throw invalid("engine \(quoted(value)) is not one of \(DiskEngine.spellings)")
                    }
                    engine = parsed
                case "cache":
                    try give("cache")
                    guard let parsed = DiskCache(rawValue: String(value)) else {
                        throw invalid("cache \(quoted(value)) is not one of \(DiskCache.spellings)")
                    }
                    cache = parsed
                default:
                    throw DomainConfigError(
                        .unknownKey,
                        "\(quoted(key)) is not a disk parameter here; use target, format, vdev, access, devtype, engine, cache or the flags discard, no-discard")
                }
            } else if parameter == "discard" || parameter == "no-discard" {
                try give("discard")
                discard = parameter == "discard"
            } else if parameter == "cdrom" {
                throw DomainConfigError(.unsupported, "cdrom devices are not supported; only disks are")
            } else if comma != nil || !parameter.isEmpty || positionsUsed > 0 {
                // A positional parameter: the first position not yet given by name.
                while positionsUsed < 4 && given.contains(["target", "format", "vdev", "access"][positionsUsed]) {
                    positionsUsed += 1
                }
                guard positionsUsed < 4 else {
                    throw invalid("too many positional parameters at \(quoted(parameter)); the order is target, format, vdev, access")
                }
                let name = ["target", "format", "vdev", "access"][positionsUsed]
                given.insert(name)
                positionsUsed += 1
                switch name {
                case "target" where isURI:
                    target = parameter
                case "target":
                    let (prefix, path) = Self.splitPrefix(parameter)
                    if let prefix {
                        guard ["file", "phy", "raw"].contains(prefix) else {
                            throw DomainConfigError(
                                .unsupported,
                                "the target prefix \(quoted(prefix + ":")) is not supported; use file:, phy:, raw: or a plain path")
                        }
                        // The deprecated form has no format position: the prefix gave it.
                        if !given.contains("format") {
                            given.insert("format")
                            format = "raw"
                        }
                    }
                    target = path
                case "format": format = parameter
                case "vdev": vdev = parameter
                default: access = parameter
                }
            }
            guard let comma else { break }
            rest = rest[rest.index(after: comma)...]
        }

        let formatText = format.flatMap { $0.isEmpty ? nil : $0 } ?? "raw"
        guard formatText == "raw" else {
            throw DomainConfigError(.unsupported, "format \(quoted(formatText)) is not supported; only raw images are served here")
        }
        guard let target, !target.isEmpty else {
            throw DomainConfigError(.missing, "no target; give the image or device path first or as target=PATH")
        }
        guard !target.utf8.contains(0) else { throw invalid("the target contains a NUL byte") }
        guard var vdevText = vdev, !vdevText.isEmpty else {
            throw DomainConfigError(.missing, "no vdev; give the guest's device name, e.g. vdev=xvda")
        }
        // The deprecated form may say `xvda:disk` or `hdc:cdrom`.
        if vdevText.hasSuffix(":disk") {
            vdevText = vdevText.dropLast(":disk".count)
        } else if vdevText.hasSuffix(":cdrom") {
            throw DomainConfigError(.unsupported, "cdrom devices are not supported; only disks are")
        }
        let accessValue: DiskAccess
        if let access, !access.isEmpty {
            guard let parsed = DiskAccess(xl: access) else {
                throw invalid("access \(quoted(access)) is not one of \(DiskAccess.spellings)")
            }
            accessValue = parsed
        } else {
            accessValue = .readWrite
        }
        let isNBD = NBDURI.looksLikeURI(String(target))
        if isNBD && cache != nil {
            throw invalid("cache= is for image files and block devices; the NBD export \(quoted(target)) is cached by its server")
        }
        self.target = target.hasPrefix("/") || isNBD ? String(target) : "/dev/" + target
        self.format = .raw
        self.vdev = try VirtualDiskDevice(name: String(vdevText))
        self.access = accessValue
        self.discard = discard
        self.engine = engine
        self.cache = cache
    }

    /// `phy:/dev/x` → ("phy", "/dev/x"): a prefix is a lowercase letter, then letters
    /// and digits (`qcow2`), before a `:`
    /// at the start; a path beginning with `/` has none.
    static func splitPrefix(_ text: Substring) -> (String?, Substring) {
        guard let colon = text.firstIndex(of: ":") else { return (nil, text) }
        let prefix = text[..<colon]
        guard let first = prefix.first, first >= "a", first <= "z",
            prefix.allSatisfy({ ($0 >= "a" && $0 <= "z") || ($0 >= "0" && $0 <= "9") })
        else { return (nil, text) }
        return (String(prefix), text[text.index(after: colon)...])
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    func trimmingBlanks() -> Substring {
        let start = drop { $0 == " " || $0 == "\t" }
        var end = start.endIndex
        while end > start.startIndex {
            let before = start.index(before: end)
            guard start[before] == " " || start[before] == "\t" else { break }
            end = before
        }
        return start[..<end]
    }
}
