/// A node's children's names in creation order, with constant-time insert, remove and
/// membership: a 20,000-entry directory must not make each change cost the whole list.
///
/// Removal leaves a hole that a later compaction closes, once holes outnumber names, so
/// the storage stays within twice the live names.
struct XenStoreChildren: Sendable, Sequence {
    private var slots: [String?] = []
    private var index: [String: Int] = [:]

    var count: Int { index.count }
    var isEmpty: Bool { index.isEmpty }

    func contains(_ name: String) -> Bool { index[name] != nil }

    mutating func append(_ name: String) {
        guard index[name] == nil else { return }
        index[name] = slots.count
        slots.append(name)
    }

    mutating func remove(_ name: String) {
        guard let i = index.removeValue(forKey: name) else { return }
        slots[i] = nil
        if slots.count > 32 && slots.count > 2 * index.count { compact() }
    }

    private mutating func compact() {
        slots = slots.filter { $0 != nil }
        for (i, name) in slots.enumerated() { index[name!] = i }
    }

    func makeIterator() -> some IteratorProtocol<String> {
        slots.lazy.compactMap { $0 }.makeIterator()
    }
}
