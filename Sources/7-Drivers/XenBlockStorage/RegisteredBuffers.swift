/// The memory an engine has registered with the kernel, by slot of its registered-buffer
/// table, and which slot holds a given buffer (a read or write may go as a fixed-buffer
/// operation only when its buffer lies wholly inside one). Pure bookkeeping: the engine
/// makes the system calls.
struct RegisteredBuffers {
    private struct Region {
        var start: UInt
        var end: UInt
        var slot: Int32
    }

    /// Regions sorted by start address; they do not overlap.
    private var regions: [Region] = []
    private var freeSlots: [Int32]

    /// An empty book for a table of `capacity` slots.
    init(capacity: Int) {
        freeSlots = (0..<Int32(capacity)).reversed()
    }

    /// Regions registered.
    var count: Int { regions.count }

    /// A free slot for `memory` (not yet recorded: ``record(_:slot:)`` once the kernel took
    /// it), or nil when the table is full, the memory is empty, or it overlaps a region
    /// already registered (two slots for one page could not both be unregistered safely).
    func slotFor(_ memory: UnsafeMutableRawBufferPointer) -> Int32? {
        guard let base = memory.baseAddress, memory.count > 0, let slot = freeSlots.last else { return nil }
        let start = UInt(bitPattern: base), end = start + UInt(memory.count)
        let i = firstIndex(endingAfter: start)
        if i < regions.count && regions[i].start < end { return nil }
        return slot
    }

    /// Records that `slot` (from ``slotFor(_:)``) now holds `memory`.
    mutating func record(_ memory: UnsafeMutableRawBufferPointer, slot: Int32) {
        let start = UInt(bitPattern: memory.baseAddress!)
        let region = Region(start: start, end: start + UInt(memory.count), slot: slot)
        precondition(freeSlots.last == slot, "record the slot slotFor gave")
        regions.insert(region, at: firstIndex(endingAfter: start))
        freeSlots.removeLast()
    }

    /// Forgets the region in `slot`; false if none is there.
    mutating func remove(slot: Int32) -> Bool {
        guard let i = regions.firstIndex(where: { $0.slot == slot }) else { return false }
        regions.remove(at: i)
        freeSlots.append(slot)
        return true
    }

    /// The slot whose region holds all of `[address, address + length)`, if any.
    func slot(holding address: UnsafeRawPointer, length: Int) -> Int32? {
        let start = UInt(bitPattern: address)
        let i = firstIndex(endingAfter: start)
        guard i < regions.count, regions[i].start <= start, length <= Int(regions[i].end - start) else { return nil }
        return regions[i].slot
    }

    /// The first region that ends after `address` (binary search; `regions.count` if none).
    private func firstIndex(endingAfter address: UInt) -> Int {
        var low = 0, high = regions.count
        while low < high {
            let mid = (low + high) / 2
            if regions[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
