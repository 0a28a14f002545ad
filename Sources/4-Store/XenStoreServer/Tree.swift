import XenABI
import XenStore

/// One node: its value, its children's names in creation order, its permissions.
struct XenStoreNode: Sendable {
    var value: [UInt8]
    var children = XenStoreChildren()
    var permissions: XenStorePermissions
    /// Bumped whenever `children` changes; `XS_DIRECTORY_PART` replies carry it so a client
    /// reading a long listing in parts can tell the listing changed under it.
    var childrenGeneration: UInt64 = 0
    /// The store generation of the node's last committed change: a transaction remembers
    /// it for every node it touches and fails with `EAGAIN` if it moved (Xen's generation count).
    var generation: UInt64 = 0

    init(value: [UInt8], permissions: XenStorePermissions) {
        self.value = value
        self.permissions = permissions
    }
}

/// What the request code needs of a tree: the store itself, or a transaction's view of it.
protocol XenStoreNodes {
    subscript(path: String) -> XenStoreNode? { get }
    func ownedCount(_ domain: DomainID) -> Int
    /// Replaces or inserts a node. Does not touch the parent.
    mutating func set(_ path: String, _ node: XenStoreNode)
    /// Removes one node. Does not touch the parent.
    mutating func drop(_ path: String)
    /// Adds or removes `name` in `parent`'s children in place (the parent must exist).
    mutating func editChildren(of parent: String, generation: UInt64, _ edit: (inout XenStoreChildren) -> Void)
}

extension XenStoreNodes {
    /// `path` and every node below it, parents before children.
    func subtree(_ path: String) -> [String] {
        var out: [String] = []
        var stack = [path]
        while let p = stack.popLast() {
            guard let node = self[p] else { continue }
            out.append(p)
            for child in node.children.reversed() { stack.append(XenStorePath.join(p, child)) }
        }
        return out
    }
}

/// The committed tree. Nodes are edited in place: a change never copies a node's value or
/// children list, so its cost does not grow with the size of a directory or of the store.
struct XenStoreTree: XenStoreNodes, Sendable {
    private(set) var nodes: [String: XenStoreNode]
    /// Nodes owned per domain, for the node quota.
    private(set) var owned: [DomainID: Int] = [:]

    init() {
        nodes = ["/": XenStoreNode(value: [], permissions: XenStorePermissions(owner: .dom0))]
        owned[.dom0] = 1
    }

    subscript(path: String) -> XenStoreNode? { nodes[path] }

    var count: Int { nodes.count }

    func ownedCount(_ domain: DomainID) -> Int { owned[domain, default: 0] }

    mutating func set(_ path: String, _ node: XenStoreNode) {
        if let old = nodes[path] { owned[old.permissions.owner, default: 0] -= 1 }
        owned[node.permissions.owner, default: 0] += 1
        nodes[path] = node
    }

    mutating func drop(_ path: String) {
        if let old = nodes.removeValue(forKey: path) { owned[old.permissions.owner, default: 0] -= 1 }
    }

    mutating func editChildren(of parent: String, generation: UInt64, _ edit: (inout XenStoreChildren) -> Void) {
        edit(&nodes[parent]!.children)
        nodes[parent]!.childrenGeneration = generation
    }

    /// Stamps a committed change on `path`.
    mutating func stamp(_ path: String, _ generation: UInt64) {
        nodes[path]?.generation = generation
    }
}
