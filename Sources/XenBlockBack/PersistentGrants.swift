import XenABI
import XenHypervisor

/// The frontend's grants a queue keeps mapped once `feature-persistent` is negotiated:
/// at most `capacity` single-page mappings, the least recently used idle one unmapped
/// to make room. Storage reads and writes go straight to and from these pages, so a
/// segment costs no grant copy and no bounce page.
///
/// An entry used by a request in flight is never unmapped. A request waits while its
/// segments could need more new mappings than there are free or idle entries
/// (``hasRoom(for:)``), until completions release some; `capacity` is at least the
/// largest request, so one request alone always fits.
///
/// Confined to the queue thread.
final class PersistentGrants {
    private struct Entry {
        var mapping: GrantMapping?
        var ref = GrantRef(0)
        var lastUse: UInt64 = 0
        /// Segments in flight using the page.
        var users = 0
    }

    let capacity: Int
    private let mapper: any GrantMapper
    private let domain: DomainID
    private var entries: [Entry]
    private var byRef: [GrantRef: Int]
    private var unused: [Int]
    /// Mapped entries no request is using (eviction candidates).
    private var idle = 0
    private var clock: UInt64 = 0
    private let counters: BlockQueueCounters

    init(capacity: Int, mapper: any GrantMapper, domain: DomainID, counters: BlockQueueCounters) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.mapper = mapper
        self.domain = domain
        self.counters = counters
        entries = Array(repeating: Entry(), count: capacity)
        byRef = Dictionary(minimumCapacity: capacity)
        unused = Array((0..<capacity).reversed())
    }

    /// Whether `count` more segments can be taken now, were none of them mapped yet.
    func hasRoom(for count: Int) -> Bool { count <= unused.count + idle }

    /// The entry holding `ref` mapped writable, mapped now if need be, with one more
    /// user; nil if the frontend's grant cannot be mapped (the request fails). Ask
    /// ``hasRoom(for:)`` for the whole request first.
    func take(_ ref: GrantRef) -> Int? {
        clock &+= 1
        if let e = byRef[ref] {
            if entries[e].users == 0 { idle -= 1 }
            entries[e].users += 1
            entries[e].lastUse = clock
            return e
        }
        let mapping: GrantMapping
        do {
            mapping = try mapper.map(ref, from: domain, writable: true)
        } catch {
            counters.badGrants.bump()
            return nil
        }
        counters.grantMaps.bump()
        let e = unused.popLast() ?? evict()
        entries[e] = Entry(mapping: mapping, ref: ref, lastUse: clock, users: 1)
        byRef[ref] = e
        return e
    }

    /// The mapped page of an entry taken with ``take(_:)``.
    func page(_ entry: Int) -> UnsafeMutableRawPointer { entries[entry].mapping!.memory.base }

    /// One user of `entry` is done with it.
    func release(_ entry: Int) {
        entries[entry].users -= 1
        if entries[entry].users == 0 { idle += 1 }
    }

    /// Unmaps every entry (at queue stop; nothing may be in flight).
    func unmapAll() {
        for e in entries.indices {
            if let m = entries[e].mapping { try? mapper.unmap(m) }
            entries[e] = Entry()
        }
        byRef.removeAll()
        unused = Array((0..<capacity).reversed())
        idle = 0
    }

    /// Unmaps the least recently used idle entry and returns it; `hasRoom` said one exists.
    private func evict() -> Int {
        var victim = -1
        for e in entries.indices where entries[e].users == 0 && entries[e].mapping != nil {
            if victim < 0 || entries[e].lastUse < entries[victim].lastUse { victim = e }
        }
        precondition(victim >= 0, "no idle persistent grant to evict (hasRoom was not asked)")
        try? mapper.unmap(entries[victim].mapping!)
        byRef[entries[victim].ref] = nil
        entries[victim] = Entry()
        idle -= 1
        counters.grantEvictions.bump()
        return victim
    }
}
