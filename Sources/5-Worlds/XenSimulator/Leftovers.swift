import XenABI

/// What a domain or the whole simulator left behind when it was torn down, so
/// a test can assert a clean shutdown (like NIOEmbedded's `finish()`).
///
/// Allocated pages alone are not leftovers: a guest's memory goes with it.
/// What counts is what ties two domains together or leaks a resource.
public struct Leftovers: Equatable, Sendable, CustomStringConvertible {
    /// A grant mapping that was never unmapped.
    public struct Mapping: Hashable, Sendable, CustomStringConvertible {
        /// The domain holding the mapping.
        public var mapper: DomainID
        /// The domain whose frames are mapped.
        public var granter: DomainID
        /// The handle the map call returned, which no unmap consumed.
        public var handle: GrantHandle
        /// The granter's references mapped by that call, in order.
        public var refs: [GrantRef]
        /// Whether the mapping was writable.
        public var writable: Bool
        /// One line such as `dom0 maps dom1 [8, 9] (handle:3, rw)`.
        public var description: String {
            "\(mapper) maps \(granter) \(refs.map(\.rawValue)) (\(handle), \(writable ? "rw" : "ro"))"
        }
    }

    /// A grant entry still permitting access (`GTF_permit_access`): access never ended.
    public struct Grant: Hashable, Sendable, CustomStringConvertible {
        /// The domain whose grant table holds the entry.
        public var granter: DomainID
        /// The entry's index in the granter's table.
        public var ref: GrantRef
        /// The domain the entry grants access to (its `domid` field).
        public var grantee: DomainID
        /// The granter's frame the entry names (its `frame` field).
        public var frame: FrameNumber
        /// Whether the entry carries `GTF_readonly`.
        public var readOnly: Bool
        /// `GTF_reading`/`GTF_writing` were set: the grantee still held it.
        public var inUse: Bool
        /// One line such as `dom1 gref:8 -> dom0 gfn:12 ro in use`.
        public var description: String {
            "\(granter) \(ref) -> \(grantee) \(frame)\(readOnly ? " ro" : "")\(inUse ? " in use" : "")"
        }
    }

    /// An event-channel port still open.
    public struct Port: Hashable, Sendable, CustomStringConvertible {
        /// How far the port got: allocated for a peer, or connected to one.
        public enum State: Hashable, Sendable {
            /// Allocated for `remote` to bind, never bound (or its peer closed).
            case unbound(remote: DomainID)
            /// Connected to `remotePort` of `remote`.
            case interdomain(remote: DomainID, remotePort: EventPort)
        }
        /// The domain that owns the port.
        public var domain: DomainID
        /// The port number, local to ``domain``.
        public var port: EventPort
        /// Whether the port was still waiting for its peer or connected.
        public var state: State
        /// One line such as `dom1 port:3 bound to dom0 port:5`.
        public var description: String {
            switch state {
            case .unbound(let r): "\(domain) \(port) unbound for \(r)"
            case .interdomain(let r, let rp): "\(domain) \(port) bound to \(r) \(rp)"
            }
        }
    }

    /// Grant mappings never unmapped, ordered by mapper and handle.
    public var mappings: [Mapping] = []
    /// Grant entries whose access never ended, ordered by granter and reference.
    public var grants: [Grant] = []
    /// Event-channel ports never closed, ordered by domain and port.
    public var ports: [Port] = []
    /// Domains whose log-dirty was still on (its write protection and descriptors
    /// are released by the teardown that reports it).
    public var dirtyLogs: [DomainID] = []

    /// A report holding the given leftovers as they are (tests build the report they expect with it).
    public init(mappings: [Mapping] = [], grants: [Grant] = [], ports: [Port] = []) {
        self.mappings = mappings
        self.grants = grants
        self.ports = ports
    }

    /// True when nothing was left behind.
    public var isEmpty: Bool { mappings.isEmpty && grants.isEmpty && ports.isEmpty && dirtyLogs.isEmpty }

    /// Adds `other`, keeping a stable order so two reports compare equal.
    mutating func merge(_ other: Leftovers) {
        mappings += other.mappings
        grants += other.grants
        ports += other.ports
        dirtyLogs += other.dirtyLogs
        normalise()
    }

    mutating func normalise() {
        mappings.sort { ($0.mapper, $0.handle.rawValue) < ($1.mapper, $1.handle.rawValue) }
        grants.sort { ($0.granter, $0.ref.rawValue) < ($1.granter, $1.ref.rawValue) }
        ports.sort { ($0.domain, $0.port) < ($1.domain, $1.port) }
        dirtyLogs.sort()
        // A mapping of a dying domain's frames is reported by both ends' teardown.
        var seen = Set<Mapping>()
        mappings = mappings.filter { seen.insert($0).inserted }
    }

    /// `no leftovers`, or one line per kind of leftover, for a test failure message.
    public var description: String {
        if isEmpty { return "no leftovers" }
        var lines: [String] = []
        if !mappings.isEmpty { lines.append("mapped grants: " + mappings.map(\.description).joined(separator: "; ")) }
        if !grants.isEmpty { lines.append("granted entries: " + grants.map(\.description).joined(separator: "; ")) }
        if !ports.isEmpty { lines.append("open ports: " + ports.map(\.description).joined(separator: "; ")) }
        if !dirtyLogs.isEmpty { lines.append("log-dirty still on: " + dirtyLogs.map(\.description).joined(separator: "; ")) }
        return lines.joined(separator: "\n")
    }
}
