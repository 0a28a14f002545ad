import XenABI

/// Xen's rules for node names (`is_valid_nodename` in xenstored): absolute after resolving,
/// only `A-Z a-z 0-9 - / _ @`, no empty component, no trailing slash except the root,
/// and bounded by `XENSTORE_ABS_PATH_MAX` / `XENSTORE_REL_PATH_MAX`.
public enum XenStorePath {
    /// `/local/domain/<id>`: a domain's home, against which relative paths resolve.
    public static func home(of domain: DomainID) -> String { "/local/domain/\(domain.rawValue)" }

    /// True for the special watch-only names `@introduceDomain` and `@releaseDomain`.
    public static func isSpecial(_ path: String) -> Bool { path.hasPrefix("@") }

    /// Resolves `path` for `domain` and validates it; throws `EINVAL` as xenstored does.
    public static func resolve(_ path: String, for domain: DomainID) throws(XenStoreError) -> String {
        let utf8 = path.utf8
        if utf8.first == UInt8(ascii: "/") {
            guard utf8.count <= XenStoreLimits.absolutePathMax else {
                throw XenStoreError(.invalid, "path longer than XENSTORE_ABS_PATH_MAX")
            }
            try validate(path)
            return path
        }
        guard utf8.count <= XenStoreLimits.relativePathMax else {
            throw XenStoreError(.invalid, "relative path longer than XENSTORE_REL_PATH_MAX")
        }
        let absolute = home(of: domain) + "/" + path
        try validate(absolute)
        return absolute
    }

    /// Validates an absolute path's characters and shape.
    public static func validate(_ path: String) throws(XenStoreError) {
        let bytes = Array(path.utf8)
        guard bytes.first == UInt8(ascii: "/") else { throw XenStoreError(.invalid, "path is not absolute") }
        guard bytes.count <= XenStoreLimits.absolutePathMax else {
            throw XenStoreError(.invalid, "path longer than XENSTORE_ABS_PATH_MAX")
        }
        if bytes.count == 1 { return }
        guard bytes.last != UInt8(ascii: "/") else { throw XenStoreError(.invalid, "path ends in '/'") }
        var previous: UInt8 = 0
        for b in bytes {
            let ok = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "/") || b == UInt8(ascii: "_")
                || b == UInt8(ascii: "@")
            guard ok else { throw XenStoreError(.invalid, "invalid character in path") }
            if b == UInt8(ascii: "/") && previous == UInt8(ascii: "/") {
                throw XenStoreError(.invalid, "empty path component")
            }
            previous = b
        }
    }

    /// The parent of an absolute path ("/" for a top-level node and for "/").
    public static func parent(of path: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")), slash != path.utf8.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// The last component of an absolute path.
    public static func name(of path: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return path }
        return String(path[path.utf8.index(after: slash)...])
    }

    /// `parent` joined with `child`.
    public static func join(_ parent: String, _ child: String) -> String {
        parent == "/" ? "/" + child : parent + "/" + child
    }

    /// True when `path` is `ancestor` or lies below it.
    public static func isWithin(_ path: String, _ ancestor: String) -> Bool {
        if ancestor == "/" { return path.hasPrefix("/") }
        return path == ancestor || path.hasPrefix(ancestor + "/")
    }
}
