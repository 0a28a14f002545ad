import XenLocks
import CXen
import SystemPackage
import XenABI
import XenHypervisor

/// One domain of the simulated hypervisor: its memory (frames in a memfd),
/// its grant table, its event channels, and the hypercall view a driver in it
/// gets (`Hypervisor`).
///
/// Besides the library-shaped handles, it offers what a guest kernel has: the
/// gnttab calls (`grantAccess`, `endAccess`) and direct access to its frames
/// and grant entries, for tests that play the guest (or a hostile one).
public final class SimulatedDomain: Hypervisor, @unchecked Sendable {
    // @unchecked: mutable state (`maptrack`, `eventHandles`, `dead`,
    // `nextHandle`) is guarded by `lock`; `hypervisor` is a weak reference,
    // which Swift reads atomically.

    /// This domain's id; dom0 is the privileged one.
    public let domainID: DomainID
    /// Frames of memory this domain owns: frame numbers `0 ..< frameCount`.
    public let frameCount: Int
    /// True for dom0, the control domain.
    public var isPrivileged: Bool { domainID == .dom0 }

    weak var hypervisor: SimulatedHypervisor?
    let memory: SharedMemory
    let grantTable: GrantTable
    let events: EventDomain
    let dirty: DirtyLog
    private let allocator: SimulatedPageAllocator
    /// The guest's suspend call and the toolstack's answer (``DomainSuspending``).
    let suspension = SimulatedSuspension()

    private let lock = Lock()
    private var dead = false
    private var nextHandle: UInt32 = 1
    private var maptrack: [UInt32: MapRecord] = [:]
    private var eventHandles: [ObjectIdentifier: SimulatedEventChannels] = [:]

    /// One grant mapping this domain holds (Xen's maptrack entry, per map call).
    struct MapRecord {
        let mapper: ObjectIdentifier
        /// Kept alive by the mapping: a dead granter's frames stay valid for
        /// its mappers, as Xen keeps the pages of a dying domain referenced.
        let granter: SimulatedDomain
        let refs: [GrantRef]
        let base: UnsafeMutableRawPointer
        let writable: Bool
        var handle = GrantHandle(0)
    }

    init(id: DomainID, frames: Int, grantFrames: Int, machine: String, hypervisor: SimulatedHypervisor?) throws(HypervisorError) {
        domainID = id
        frameCount = frames
        self.hypervisor = hypervisor
        memory = try SharedMemory(name: "\(machine)-dom\(id.rawValue)", pages: frames)
        dirty = try DirtyLog(frames: frames, name: "\(machine)-dom\(id.rawValue)-dirty")
        grantTable = try GrantTable(owner: id, frames: grantFrames, ownerFrames: frames, machine: machine, dirty: dirty)
        events = try EventDomain(domain: id, machine: machine)
        allocator = SimulatedPageAllocator(owner: id, memory: memory, grants: grantTable)
    }

    func withLock<T>(_ body: () -> T) -> T { lock.withLock(body) }

    func liveHypervisor() throws(HypervisorError) -> SimulatedHypervisor {
        guard let hv = hypervisor, !lock.withLock({ dead }) else {
            throw HypervisorError(.closed, "\(domainID) was destroyed")
        }
        return hv
    }

    // MARK: - Hypervisor

    /// Opens a new ``SimulatedEventChannels`` handle with its own eventfd; throws `.closed` once the domain is destroyed.
    public func openEventChannels() throws(HypervisorError) -> any EventChannels {
        try openSimulatedEventChannels()
    }

    /// `openEventChannels` with its concrete type.
    public func openSimulatedEventChannels() throws(HypervisorError) -> SimulatedEventChannels {
        _ = try liveHypervisor()
        let handle = try SimulatedEventChannels(domain: self)
        lock.withLock { eventHandles[ObjectIdentifier(handle)] = handle }
        return handle
    }

    /// Opens a grant-mapping handle of this domain (`xengnttab_open`); throws `.closed` once the domain is destroyed.
    public func openGrantMapper() throws(HypervisorError) -> any GrantMapper {
        _ = try liveHypervisor()
        return SimulatedGrantMapper(domain: self)
    }

    /// Opens a grant-sharing handle of this domain (`xengntshr_open`); throws `.closed` once the domain is destroyed.
    public func openGrantSharer() throws(HypervisorError) -> any GrantSharer {
        _ = try liveHypervisor()
        return SimulatedGrantSharer(domain: self)
    }

    /// The allocator of this domain's own frames.
    public var pageAllocator: any PageAllocator { allocator }

    // MARK: - The guest kernel's view

    /// Grants `frame` to `grantee` in a free entry of this domain's table
    /// (Mini-OS `gnttab_grant_access`): writes `domid` and `frame`, then,
    /// after a release barrier, `GTF_permit_access` (and `GTF_readonly`).
    /// The frame is not checked here; the hypervisor checks it at map time.
    public func grantAccess(frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) -> GrantRef {
        try grantTable.grantAccess(frame: frame, to: grantee, readOnly: readOnly)
    }

    /// Fills reserved entry `ref` (below `GNTTAB_NR_RESERVED_ENTRIES`, such as
    /// `GrantRef.xenstore`), as the toolstack does when it builds a domain.
    public func grantReservedAccess(_ ref: GrantRef, frame: FrameNumber, to grantee: DomainID, readOnly: Bool) throws(HypervisorError) {
        try grantTable.grantReserved(ref, frame: frame, to: grantee, readOnly: readOnly)
    }

    /// Ends a grant (Mini-OS `gnttab_end_access`), following "Invalidating an
    /// unused GTF_permit_access entry" in `grant_table.h`; `.busy`, changing
    /// nothing, while the grantee maps it.
    public func endAccess(_ ref: GrantRef) throws(HypervisorError) {
        try grantTable.endAccess(ref)
    }

    /// The address of `frame` in this domain's memory.
    public func memory(of frame: FrameNumber) -> UnsafeMutableRawPointer {
        precondition(frame.rawValue < UInt64(frameCount), "\(frame) is not a frame of \(domainID)")
        return memory.page(Int(frame.rawValue))
    }

    /// The name of the memfd holding this domain's frames, unique in the
    /// process (`/proc/self/maps` shows it as `/memfd:NAME`).
    public var memoryName: String { memory.name }

    /// The memfd holding this domain's frames (frame `n` at offset `n * 4096`).
    public var memoryFileDescriptor: FileDescriptor { FileDescriptor(rawValue: memory.fd) }

    /// Entries in this domain's grant table.
    public var grantTableSize: Int { grantTable.count }

    /// The raw `grant_entry_v1` for `ref`, as the guest sees it in its table.
    /// Writing it directly is how a test plays a buggy or hostile guest.
    public func grantEntry(_ ref: GrantRef) -> UnsafeMutablePointer<grant_entry_v1> {
        grantTable.entry(ref.rawValue)
    }

    /// This domain's page laid out as Xen's `shared_info`, holding the 2-level
    /// `evtchn_pending` and `evtchn_mask` bitmaps.
    public var sharedInfo: UnsafeMutableRawPointer { events.sharedInfo.base }

    /// Whether `port`'s pending bit is set in `shared_info.evtchn_pending`.
    public func isEventPending(_ port: EventPort) -> Bool {
        let (w, b) = (Int(port.rawValue) / 64, UInt64(1) << (port.rawValue % 64))
        // relaxed: an instantaneous look, for tests.
        return events.pendingWord(w).load(ordering: .relaxed) & b != 0
    }

    /// Whether `port`'s mask bit is set in `shared_info.evtchn_mask`.
    public func isEventMasked(_ port: EventPort) -> Bool {
        let (w, b) = (Int(port.rawValue) / 64, UInt64(1) << (port.rawValue % 64))
        // relaxed: an instantaneous look, for tests.
        return events.maskWord(w).load(ordering: .relaxed) & b != 0
    }

    /// What this domain holds right now that a teardown would report: its
    /// mappings, its granted entries, its open ports.
    public func outstanding() -> Leftovers {
        var left = Leftovers(mappings: lock.withLock { maptrack.values.map(leftover) }, grants: grantTable.grantedEntries())
        if let hv = hypervisor { left.ports = hv.eventControl.withLock { events.openPorts() } }
        if dirty.isLogging { left.dirtyLogs = [domainID] }
        left.normalise()
        return left
    }

    // MARK: - Maptrack

    func track(_ record: MapRecord) -> GrantHandle {
        lock.withLock {
            var record = record
            // Handles are never reused, so a stale one is always bad_handle.
            record.handle = GrantHandle(nextHandle)
            nextHandle &+= 1
            maptrack[record.handle.rawValue] = record
            return record.handle
        }
    }

    /// Removes the record `mapping` names, if `mapper` made it; `GNTST_bad_handle` otherwise.
    func untrack(_ mapping: GrantMapping, by mapper: ObjectIdentifier) throws(HypervisorError) -> MapRecord {
        try lock.withLock { () throws(HypervisorError) -> MapRecord in
            guard let r = maptrack[mapping.handle.rawValue], r.mapper == mapper, r.base == mapping.memory.base,
                r.granter.domainID == mapping.domain, r.refs.count == mapping.memory.count
            else { throw .grant(.badHandle, "unmap: \(mapping.handle) is not a mapping of this handle") }
            maptrack[mapping.handle.rawValue] = nil
            return r
        }
    }

    /// Unmaps the view (munmap), then unpins: once the granter sees its flags
    /// clear, this domain can no longer touch the pages.
    static func release(_ record: MapRecord) {
        ForeignView.unmap(record.base, pages: record.refs.count)
        let table = record.granter.grantTable
        table.lock.withLock { for ref in record.refs { table.unpin(ref, writable: record.writable) } }
    }

    private func leftover(_ r: MapRecord) -> Leftovers.Mapping {
        .init(mapper: domainID, granter: r.granter.domainID, handle: r.handle, refs: r.refs, writable: r.writable)
    }

    /// Mappings this domain holds of `granter`'s frames.
    func mappings(of granter: DomainID) -> [Leftovers.Mapping] {
        lock.withLock { maptrack.values.filter { $0.granter.domainID == granter }.map(leftover) }
    }

    /// Removes and returns the mappings this domain holds of `granter`'s frames.
    func takeMappings(of granter: DomainID) -> [MapRecord] {
        lock.withLock {
            let taken = maptrack.values.filter { $0.granter.domainID == granter }
            for r in taken { maptrack[r.handle.rawValue] = nil }
            return taken.sorted { $0.handle.rawValue < $1.handle.rawValue }
        }
    }

    /// The event-channel handles open on this domain.
    var openEventHandles: [SimulatedEventChannels] { lock.withLock { Array(eventHandles.values) } }

    func forget(_ handle: SimulatedEventChannels) {
        _ = lock.withLock { eventHandles.removeValue(forKey: ObjectIdentifier(handle)) }
    }

    // MARK: - Teardown

    /// Marks the domain dead and hands over what it still holds.
    func takeForTeardown() -> (mappings: [MapRecord], handles: [SimulatedEventChannels]) {
        lock.withLock {
            dead = true
            let m = maptrack.values.sorted { $0.handle.rawValue < $1.handle.rawValue }
            let h = Array(eventHandles.values)
            maptrack = [:]
            eventHandles = [:]
            return (m, h)
        }
    }

    func leftovers(of records: [MapRecord]) -> [Leftovers.Mapping] { records.map(leftover) }
}
