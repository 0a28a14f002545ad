import XenLocks
import Atomics
import Glibc
import XenABI
import XenHypervisor

/// The user-space hypervisor: domains with memfd-backed frames, v1 grant
/// tables and 2-level event channels, with Xen's checks and status codes.
///
/// dom0 exists from the start; guests are created with a number of frames and
/// get ids 1, 2, …, wrapping round below `DomainID.firstReserved` to ids
/// that are free again. Tearing a domain or the whole machine down reports what was
/// left behind, so a test can assert a clean shutdown.
public final class SimulatedHypervisor: Sendable {
    /// The privileged control domain.
    public let dom0: SimulatedDomain

    /// Prefix of this machine's memfd names, unique in the process.
    public let name: String
    // relaxed: only uniqueness matters.
    private static let machines = ManagedAtomic<Int>(0)

    private let state: State
    /// Serialises event-channel control operations (bind, unbind, close); see `EventDomain`.
    let eventControl = Lock()

    private final class State: @unchecked Sendable {
        // @unchecked: every field is guarded by `lock`.
        let lock = Lock()
        var domains: [DomainID: SimulatedDomain] = [:]
        /// Where the search for a free id starts: ids go round, as Xen's do,
        /// so a freed id is taken again only after the others (stale store
        /// entries of a dead domain are not mistaken for a new one's at once).
        var nextID: UInt16 = 1
        var down = false
        /// Ids being given to a domain under creation with a chosen id.
        var reserved: Set<DomainID> = []
    }

    /// Grant-table frames per domain (Xen's default `max_grant_frames` is 64;
    /// 32 frames give 16384 v1 entries).
    public static let defaultGrantFrames = 32

    /// Creates the machine with dom0 owning `dom0Frames` frames.
    public init(dom0Frames: Int = 1024) {
        name = "xenpv-\(getpid())-\(Self.machines.wrappingIncrementThenLoad(ordering: .relaxed))"
        state = State()
        // A machine that cannot create its dom0 (no memfd, no memory) is unusable.
        do {
            dom0 = try SimulatedDomain(
                id: .dom0, frames: dom0Frames, grantFrames: Self.defaultGrantFrames, machine: name, hypervisor: nil)
        } catch {
            fatalError("creating dom0: \(error)")
        }
        dom0.hypervisor = self
        state.domains[.dom0] = dom0
    }

    deinit {
        _ = shutdown()
    }

    /// Creates a guest with `frames` 4 KiB frames and the next free id.
    public func createDomain(frames: Int, grantFrames: Int = defaultGrantFrames) throws(HypervisorError) -> SimulatedDomain {
        guard frames > 0, grantFrames > 0 else { throw .errno(.invalidArgument, "a domain needs frames and a grant table") }
        let id: DomainID = try state.lock.withLock { () throws(HypervisorError) -> DomainID in
            guard !state.down else { throw HypervisorError(.closed, "the simulated hypervisor is shut down") }
            let limit = DomainID.firstReserved.rawValue
            for _ in 1..<limit {
                let candidate = state.nextID
                state.nextID = candidate + 1 < limit ? candidate + 1 : 1
                if state.domains[DomainID(candidate)] == nil, !state.reserved.contains(DomainID(candidate)) { return DomainID(candidate) }
            }
            throw .errno(.noSpace, "no domain ids left")
        }
        let domain = try SimulatedDomain(id: id, frames: frames, grantFrames: grantFrames, machine: name, hypervisor: self)
        try state.lock.withLock { () throws(HypervisorError) in
            guard !state.down else { throw HypervisorError(.closed, "the simulated hypervisor is shut down") }
            state.domains[id] = domain
        }
        return domain
    }

    /// Creates a guest with the id `id` (a restored domain keeps its id); `EEXIST`
    /// when a live domain has it, `EINVAL` for dom0 or a reserved id.
    public func createDomain(id: DomainID, frames: Int, grantFrames: Int = defaultGrantFrames) throws(HypervisorError) -> SimulatedDomain {
        guard frames > 0, grantFrames > 0 else { throw .errno(.invalidArgument, "a domain needs frames and a grant table") }
        guard id != .dom0, id.rawValue < DomainID.firstReserved.rawValue else { throw .errno(.invalidArgument, "\(id) cannot be a guest's id") }
        // Reserved first (a placeholder dom0 entry would be wrong): checked and filled under the lock.
        try state.lock.withLock { () throws(HypervisorError) in
            guard !state.down else { throw HypervisorError(.closed, "the simulated hypervisor is shut down") }
            guard state.domains[id] == nil, !state.reserved.contains(id) else { throw .errno(.fileExists, "\(id) exists on this host") }
            state.reserved.insert(id)
        }
        let domain: SimulatedDomain
        do {
            domain = try SimulatedDomain(id: id, frames: frames, grantFrames: grantFrames, machine: name, hypervisor: self)
        } catch {
            state.lock.withLock { _ = state.reserved.remove(id) }
            throw error
        }
        try state.lock.withLock { () throws(HypervisorError) in
            state.reserved.remove(id)
            guard !state.down else { throw HypervisorError(.closed, "the simulated hypervisor is shut down") }
            state.domains[id] = domain
        }
        return domain
    }

    /// The live domain with id `id`.
    public func domain(_ id: DomainID) -> SimulatedDomain? {
        state.lock.withLock { state.domains[id] }
    }

    /// Live domains (dom0 too).
    var allDomains: [SimulatedDomain] {
        state.lock.withLock { Array(state.domains.values) }
    }

    /// Live domain ids, ascending.
    public var domainIDs: [DomainID] {
        state.lock.withLock { state.domains.keys.sorted() }
    }

    /// Destroys guest `domain`: unmaps what it mapped, drops its grant table,
    /// closes its ports (their peers fall back to unbound). Returns what it left
    /// behind and what other domains still map of its frames; those mappings
    /// stay valid until their holders unmap them, as Xen keeps a dying
    /// domain's pages while they are mapped. dom0 goes only with `shutdown()`.
    public func destroyDomain(_ domain: SimulatedDomain) -> Leftovers {
        precondition(domain.domainID != .dom0, "dom0 goes down only with shutdown()")
        let others: [SimulatedDomain]? = state.lock.withLock {
            guard state.domains[domain.domainID] === domain else { return nil }
            state.domains[domain.domainID] = nil
            return Array(state.domains.values)
        }
        guard let others else { return Leftovers() }
        return teardown(domain, others: others)
    }

    /// Tears every domain down, guests first, then dom0. Afterwards every
    /// operation reports `.closed`.
    public func shutdown() -> Leftovers {
        let all: [SimulatedDomain] = state.lock.withLock {
            state.down = true
            let all = state.domains.values.sorted { $0.domainID > $1.domainID }
            state.domains = [:]
            return all
        }
        var left = Leftovers()
        for (i, domain) in all.enumerated() {
            left.merge(teardown(domain, others: Array(all[(i + 1)...])))
        }
        return left
    }

    private func teardown(_ domain: SimulatedDomain, others: [SimulatedDomain]) -> Leftovers {
        let (records, handles) = domain.takeForTeardown()
        var left = Leftovers()
        // Its forgotten mappings of others' grants: report, then really unmap.
        left.mappings = domain.leftovers(of: records)
        for record in records { SimulatedDomain.release(record) }
        // Others' mappings of its frames: report; they stay until unmapped.
        for other in others { left.mappings += other.mappings(of: domain.domainID) }
        if domain.dirty.stop() { left.dirtyLogs = [domain.domainID] }
        let table = domain.grantTable
        table.lock.withLock { table.markDead() }
        left.grants = table.grantedEntries()
        eventControl.withLock {
            left.ports = domain.events.openPorts()
            for handle in handles { handle.closeForTeardown() }
        }
        left.normalise()
        return left
    }
}
