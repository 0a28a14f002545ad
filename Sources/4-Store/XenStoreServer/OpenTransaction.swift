import XenABI

/// An open transaction: what it read and what it wrote, never a copy of the tree.
///
/// Like Xen's xenstored, it remembers the generation of every node it touched as it first
/// saw it (or that the node was absent) and fails its commit with `EAGAIN` if any of them
/// moved. Its footprint, the nodes it remembers, is what a guest can make the store hold
/// through it; the engine refuses requests once it reaches the transaction-nodes quota.
final class OpenTransaction {
    /// The generation each touched node had when first seen; `absent` if it did not exist.
    private(set) var seen: [String: UInt64] = [:]
    private(set) var written: [String: XenStoreNode] = [:]
    private(set) var removed: Set<String> = []
    /// Nodes each domain owns after this transaction minus before it (what its commit adds
    /// to the store's per-domain counts).
    private(set) var ownedDelta: [DomainID: Int] = [:]
    /// Watch-firing changes to replay on commit, one per path (the last wins), in first-change order.
    private var changeOrder: [String] = []
    private var changeByPath: [String: XenStoreEngine.Change] = [:]

    static let absent = UInt64.max

    /// Nodes this transaction makes the store remember.
    var footprint: Int { seen.count }  // every written or removed node was looked up first

    var changes: [XenStoreEngine.Change] { changeOrder.map { changeByPath[$0]! } }

    func note(_ change: XenStoreEngine.Change) {
        if changeByPath.updateValue(change, forKey: change.path) == nil { changeOrder.append(change.path) }
    }

    /// `path` as this transaction sees it, remembering the committed generation on first sight.
    func lookup(_ path: String, in base: XenStoreTree) -> XenStoreNode? {
        if let node = written[path] { return node }
        if removed.contains(path) { return nil }
        let node = base[path]
        if seen[path] == nil { seen[path] = node?.generation ?? Self.absent }
        return node
    }

    func ownedCount(_ domain: DomainID, in base: XenStoreTree) -> Int {
        base.ownedCount(domain) + ownedDelta[domain, default: 0]
    }

    func set(_ path: String, _ node: XenStoreNode, in base: XenStoreTree) {
        if let old = lookup(path, in: base) { ownedDelta[old.permissions.owner, default: 0] -= 1 }
        ownedDelta[node.permissions.owner, default: 0] += 1
        removed.remove(path)
        written[path] = node
    }

    func drop(_ path: String, in base: XenStoreTree) {
        guard let old = lookup(path, in: base) else { return }
        ownedDelta[old.permissions.owner, default: 0] -= 1
        written[path] = nil
        if base[path] != nil { removed.insert(path) }
    }

    func editChildren(of parent: String, generation: UInt64, in base: XenStoreTree, _ edit: (inout XenStoreChildren) -> Void) {
        if written[parent] == nil, let node = lookup(parent, in: base) { written[parent] = node }
        edit(&written[parent]!.children)
        written[parent]!.childrenGeneration = generation
    }

    /// The first node whose committed generation moved since this transaction saw it.
    func conflict(with base: XenStoreTree) -> String? {
        for (path, generation) in seen where (base[path]?.generation ?? Self.absent) != generation { return path }
        return nil
    }
}

/// The tree as a request inside a transaction sees it: the committed tree under the
/// transaction's own writes. Changes go to the transaction only.
struct OpenTransactionView: XenStoreNodes {
    let base: XenStoreTree
    let transaction: OpenTransaction

    subscript(path: String) -> XenStoreNode? { transaction.lookup(path, in: base) }
    func ownedCount(_ domain: DomainID) -> Int { transaction.ownedCount(domain, in: base) }
    mutating func set(_ path: String, _ node: XenStoreNode) { transaction.set(path, node, in: base) }
    mutating func drop(_ path: String) { transaction.drop(path, in: base) }
    mutating func editChildren(of parent: String, generation: UInt64, _ edit: (inout XenStoreChildren) -> Void) {
        transaction.editChildren(of: parent, generation: generation, in: base, edit)
    }
}
