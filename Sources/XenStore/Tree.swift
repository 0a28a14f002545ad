import XenABI

/// One node: its value, its children's names in creation order, its permissions.
struct XenStoreNode: Sendable {
    var value: [UInt8]
    var children: [String]
    var permissions: XenStorePermissions
    /// Bumped whenever `children` changes; `XS_DIRECTORY_PART` replies carry it so a client
    /// reading a long listing in parts can tell the listing changed under it.
    var childrenGeneration: UInt64
}

/// The tree as a value: a transaction works on its own copy (copy-on-write).
struct XenStoreTree: Sendable {
    private(set) var nodes: [String: XenStoreNode]
    /// Nodes owned per domain, for the node quota.
    private(set) var owned: [DomainID: Int] = [:]

    init() {
        let perms = XenStorePermissions(owner: .dom0)
        nodes = ["/": XenStoreNode(value: [], children: [], permissions: perms, childrenGeneration: 0)]
        owned[.dom0] = 1
    }

    subscript(path: String) -> XenStoreNode? { nodes[path] }

    func ownedCount(_ domain: DomainID) -> Int { owned[domain, default: 0] }

    /// Replaces or inserts a node, keeping the owner counts right. Does not touch the parent.
    mutating func set(_ path: String, _ node: XenStoreNode) {
        if let old = nodes[path] { owned[old.permissions.owner, default: 0] -= 1 }
        owned[node.permissions.owner, default: 0] += 1
        nodes[path] = node
    }

    /// Removes one node entry, keeping the owner counts right. Does not touch the parent.
    mutating func drop(_ path: String) {
        if let old = nodes.removeValue(forKey: path) { owned[old.permissions.owner, default: 0] -= 1 }
    }

    /// `path` and every node below it, parents before children.
    func subtree(_ path: String) -> [String] {
        var out: [String] = []
        var stack = [path]
        while let p = stack.popLast() {
            guard let node = nodes[p] else { continue }
            out.append(p)
            for child in node.children.reversed() { stack.append(XenStorePath.join(p, child)) }
        }
        return out
    }
}
