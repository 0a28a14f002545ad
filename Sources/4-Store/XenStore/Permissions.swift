import XenABI

/// One entry of a node's permission list in Xen's string form: a letter then a domain id
/// (`n0`, `r1`, `w2`, `b3`).
public struct XenStorePermission: Hashable, Sendable, CustomStringConvertible {
    /// What a domain may do with a node.
    public enum Access: Character, Hashable, Sendable {
        /// `n`: nothing.
        case none = "n"
        /// `r`: read (and watch).
        case read = "r"
        /// `w`: write.
        case write = "w"
        /// `b`: read and write.
        case both = "b"

        /// True for `r` and `b` (`XS_PERM_READ`): the domain may read, list and watch.
        public var canRead: Bool { self == .read || self == .both }
        /// True for `w` and `b` (`XS_PERM_WRITE`): the domain may write, create below and remove.
        public var canWrite: Bool { self == .write || self == .both }
    }

    /// The domain the entry names; in a list's first entry, the node's owner.
    public var domain: DomainID
    /// What the entry grants; in a list's first entry, what every unlisted domain may do.
    public var access: Access

    /// The entry granting `access` to `domain` (`XenStorePermission(.read, 3)` is `r3`).
    public init(_ access: Access, _ domain: DomainID) {
        self.access = access
        self.domain = domain
    }

    /// Parses `n0`, `r12`, …; nil for anything else (the daemon answers `EINVAL`).
    public init?(_ text: String) {
        guard let first = text.first, let access = Access(rawValue: first),
            let id = UInt16(text.dropFirst()), String(id) == text.dropFirst()
        else { return nil }
        self.init(access, DomainID(id))
    }

    /// The wire form: the letter then the decimal domain id (`r3`).
    public var description: String { "\(access.rawValue)\(domain.rawValue)" }
}

/// A node's permissions as Xen keeps them: the first entry names the owner (who may do
/// anything) and, by its letter, what every domain not listed may do; later entries grant
/// specific domains.
public struct XenStorePermissions: Hashable, Sendable, CustomStringConvertible {
    /// The entries in wire order, never empty: the owner's first, then the specific grants.
    public private(set) var entries: [XenStorePermission]

    /// `entries` must not be empty: the first is the owner and the default access.
    public init(_ entries: [XenStorePermission]) {
        precondition(!entries.isEmpty, "a permission list names at least its owner")
        self.entries = entries
    }

    /// Owned by `owner`; others get `others`; `grants` for specific domains.
    public init(owner: DomainID, others: XenStorePermission.Access = .none, grants: [XenStorePermission] = []) {
        self.init([XenStorePermission(others, owner)] + grants)
    }

    /// Parses the strings of `XS_SET_PERMS` / `xenstore-chmod`; nil if any is malformed or none given.
    public init?(strings: [String]) {
        var parsed: [XenStorePermission] = []
        for s in strings {
            guard let p = XenStorePermission(s) else { return nil }
            parsed.append(p)
        }
        guard !parsed.isEmpty else { return nil }
        self.entries = parsed
    }

    /// The first entry's domain: the node's owner, which may do anything with it and alone
    /// may change its permissions. Setting it keeps the default access.
    public var owner: DomainID {
        get { entries[0].domain }
        set { entries[0].domain = newValue }
    }

    /// What `domain` may do: everything for dom0 and the owner, else its entry, else the default.
    public func access(for domain: DomainID) -> XenStorePermission.Access {
        if domain == .dom0 || domain == owner { return .both }
        for entry in entries.dropFirst() where entry.domain == domain { return entry.access }
        return entries[0].access
    }

    /// The strings `XS_GET_PERMS` returns, one per entry.
    public var strings: [String] { entries.map(\.description) }
    /// The entries separated by spaces (`n0 r3`), for logs.
    public var description: String { strings.joined(separator: " ") }
}
