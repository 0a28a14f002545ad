import XenABI
import XenBlockStorage
import XenHypervisor

/// The frontend's grants a queue keeps mapped once `feature-persistent` is negotiated:
/// at most `capacity` pages. Storage reads and writes go straight to and from these
/// pages, so a segment costs no grant copy and no bounce page.
///
/// The grants a request brings that are not mapped yet are mapped together, in order,
/// as one run (`xengnttab_map_domain_grant_refs`). A frontend that hands the same pages
/// in the same order to a later request (ours does) then finds them adjacent here, and
/// the engine gets one buffer where it would get one per page (what that saves is in the
/// README's "Block devices" section, from `storage-bench --piece`).
/// (With `O_DIRECT`, requests of several pages skip these mappings: see ``BlockQueue``.)
///
/// A run is unmapped whole (gntdev removes a mapping as it was made), when it is the
/// least recently used run with no segment in flight and room is needed. A request
/// whose new grants do not fit waits for completions (``Outcome/noRoom``); if nothing
/// is in flight, the cache is emptied for it, and since `capacity` is at least the
/// largest request, it then fits.
///
/// Each run's memory is registered with the storage engine while it is mapped
/// (``StorageEngine/registerBuffer(_:)``: io_uring pins it once instead of per operation),
/// and unregistered before it is unmapped.
///
/// Confined to the queue thread.
final class PersistentGrants {
    enum Outcome { case taken, noRoom, badGrant }

    private struct Run {
        var mapping: GrantMapping?
        /// The engine's registration of the mapping's memory, if it took it.
        var registration: Int?
        var refs: [GrantRef] = []
        /// Segments in flight using the run's pages.
        var users = 0
        var lastUse: UInt64 = 0
    }

    private struct Location {
        var run: Int32
        var page: Int32
    }

    let capacity: Int
    private let mapper: any GrantMapper
    private let storage: any StorageEngine
    private let domain: DomainID
    private let counters: BlockQueueCounters
    // @exclusivity(unchecked): the queue thread's alone, used per request (as in BlockQueue).
    @exclusivity(unchecked) private var runs: [Run] = []
    @exclusivity(unchecked) private var emptyRuns: [Int] = []
    @exclusivity(unchecked) private var byRef: [GrantRef: Location]
    /// Pages mapped, over all runs.
    @exclusivity(unchecked) private var mapped = 0
    /// Segments in flight, over all runs.
    @exclusivity(unchecked) private var users = 0
    @exclusivity(unchecked) private var clock: UInt64 = 0
    /// Scratch for a request's grants that are not mapped yet (kept to avoid reallocating).
    @exclusivity(unchecked) private var fresh: [GrantRef] = []
    @exclusivity(unchecked) private var freshSeen: Set<GrantRef> = []

    init(capacity: Int, mapper: any GrantMapper, storage: any StorageEngine, domain: DomainID, counters: BlockQueueCounters) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.mapper = mapper
        self.storage = storage
        self.domain = domain
        self.counters = counters
        byRef = Dictionary(minimumCapacity: capacity)
    }

    /// Takes the pages of a request's grants, mapping those not mapped yet: the run of
    /// each segment's page goes to `runs` (give it back with ``release(_:)``), its address
    /// to `pages`. On anything but ``Outcome/taken`` nothing is taken.
    func take(_ refs: UnsafeBufferPointer<GrantRef>, runs taken: UnsafeMutablePointer<Int32>,
              pages: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> Outcome {
        clock &+= 1
        if takeMapped(refs, runs: taken, pages: pages) { return .taken }
        // Some grant is new. Mark the runs this request uses recently used, so making
        // room keeps them, and collect the new grants once each.
        collectFresh(refs)
        if !makeRoom(for: fresh.count) {
            // Completions will free runs; with none in flight, nothing would: start afresh.
            guard users == 0 else { return .noRoom }
            removeAll(evicting: true)
            collectFresh(refs)
        }
        let mapping: GrantMapping
        do {
            mapping = try mapper.map(fresh, from: domain, writable: true)
        } catch {
            counters.badGrants.bump()
            return .badGrant
        }
        counters.grantMaps.bump(UInt64(fresh.count))
        let r = emptyRuns.popLast() ?? runs.count
        if r == runs.count { runs.append(Run()) }
        runs[r] = Run(mapping: mapping, registration: storage.registerBuffer(mapping.memory.buffer), refs: fresh,
                      users: 0, lastUse: clock)
        for (j, ref) in fresh.enumerated() { byRef[ref] = Location(run: Int32(r), page: Int32(j)) }
        mapped += fresh.count
        let all = takeMapped(refs, runs: taken, pages: pages)
        assert(all, "every grant of the request is mapped now")
        return .taken
    }

    /// One segment using `run` is done.
    func release(_ run: Int32) {
        runs[Int(run)].users -= 1
        users -= 1
    }

    /// Unmaps every run (at queue stop; nothing may be in flight).
    func unmapAll() { removeAll(evicting: false) }

    /// Takes every page if all of `refs` are mapped; otherwise takes none and says false.
    private func takeMapped(_ refs: UnsafeBufferPointer<GrantRef>, runs taken: UnsafeMutablePointer<Int32>,
                            pages: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> Bool {
        for i in refs.indices {
            guard let at = byRef[refs[i]] else {
                for done in 0..<i { release(taken[done]) }
                return false
            }
            let r = Int(at.run)
            runs[r].users += 1
            runs[r].lastUse = clock
            users += 1
            taken[i] = at.run
            pages[i] = runs[r].mapping!.memory.page(Int(at.page))
        }
        return true
    }

    private func collectFresh(_ refs: UnsafeBufferPointer<GrantRef>) {
        fresh.removeAll(keepingCapacity: true)
        freshSeen.removeAll(keepingCapacity: true)
        for ref in refs {
            if let at = byRef[ref] {
                runs[Int(at.run)].lastUse = clock
            } else if freshSeen.insert(ref).inserted {
                fresh.append(ref)
            }
        }
    }

    /// Unmaps least recently used idle runs, not used by the current request, until
    /// `count` more pages fit; false if they cannot.
    private func makeRoom(for count: Int) -> Bool {
        while capacity - mapped < count {
            var victim = -1
            for r in runs.indices where runs[r].mapping != nil && runs[r].users == 0 && runs[r].lastUse != clock {
                if victim < 0 || runs[r].lastUse < runs[victim].lastUse { victim = r }
            }
            guard victim >= 0 else { return false }
            unmap(victim, evicting: true)
        }
        return true
    }

    private func removeAll(evicting: Bool) {
        for r in runs.indices where runs[r].mapping != nil {
            precondition(runs[r].users == 0, "a persistent grant in flight cannot be unmapped")
            unmap(r, evicting: evicting)
        }
    }

    private func unmap(_ r: Int, evicting: Bool) {
        if evicting { counters.grantEvictions.bump(UInt64(runs[r].refs.count)) }
        if let registration = runs[r].registration { storage.unregisterBuffer(registration) }
        try? mapper.unmap(runs[r].mapping!)
        for ref in runs[r].refs { byRef[ref] = nil }
        mapped -= runs[r].refs.count
        runs[r] = Run()
        emptyRuns.append(r)
    }
}
