import Glibc
import XenABI
import XenHypervisor

/// A grant-mapping handle of a simulated domain, shaped like `xengnttab`.
///
/// A map pins each entry in the granter's table (setting `GTF_reading` and,
/// for a writable map, `GTF_writing`), then maps the granter's frames a second
/// time from its memfd: the mapper and the granter see the same bytes. Unmap
/// removes the view first, then unpins, so once the granter sees the flags
/// clear, the mapper can no longer touch the page.
final class SimulatedGrantMapper: GrantMapper, @unchecked Sendable {
    // @unchecked: `closed` is guarded by the domain's lock.
    let domain: SimulatedDomain
    var closed = false

    init(domain: SimulatedDomain) { self.domain = domain }

    func map(_ ref: GrantRef, from granter: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        var one = ref
        return try withUnsafeMutablePointer(to: &one) { (p) throws(HypervisorError) -> GrantMapping in
            try map(UnsafeBufferPointer(start: p, count: 1), from: granter, writable: writable)
        }
    }

    func map(_ refs: UnsafeBufferPointer<GrantRef>, from granterID: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        guard !refs.isEmpty else { throw .errno(.invalidArgument, "map of no grant references") }
        guard domain.withLock({ !closed }) else { throw HypervisorError(.closed, "map on a closed grant mapper") }
        let hv = try domain.liveHypervisor()
        guard let granter = hv.domain(granterID) else { throw .grant(.badDomain, "map: no domain \(granterID)") }
        let table = granter.grantTable
        // Pin every entry or none (what xengnttab_map_domain_grant_refs gives:
        // gntdev fails the whole mmap if one entry fails).
        var frames: [UInt64] = []
        frames.reserveCapacity(refs.count)
        try table.lock.withLock { () throws(HypervisorError) in
            for (i, ref) in refs.enumerated() {
                do throws(HypervisorError) {
                    frames.append(try table.pin(ref, for: domain.domainID, writable: writable))
                } catch {
                    for done in refs[0..<i] { table.unpin(done, writable: writable) }
                    throw HypervisorError(error.code, "map entry \(i) of \(refs.count): \(error.message)")
                }
            }
        }
        let base: UnsafeMutableRawPointer
        do {
            base = try frames.withUnsafeBufferPointer { (f) throws(HypervisorError) in
                try ForeignView.map(granter.memory, frames: f, writable: writable)
            }
        } catch {
            table.lock.withLock { for ref in refs { table.unpin(ref, writable: writable) } }
            throw error
        }
        let record = SimulatedDomain.MapRecord(
            mapper: ObjectIdentifier(self), granter: granter, refs: Array(refs), base: base, writable: writable)
        let handle = domain.track(record)
        return GrantMapping(domain: granterID, memory: MappedPages(base: base, count: refs.count), handle: handle, writable: writable)
    }

    func unmap(_ mapping: GrantMapping) throws(HypervisorError) {
        let record = try domain.untrack(mapping, by: ObjectIdentifier(self))
        SimulatedDomain.release(record)
    }

    func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError) {
        guard domain.withLock({ !closed }) else { throw HypervisorError(.closed, "copy on a closed grant mapper") }
        let hv = try domain.liveHypervisor()
        for i in segments.indices {
            segments[i].status = copyOne(segments[i], hv: hv)
        }
    }

    /// One segment, as Xen's `gnttab_copy_one`: check bounds, pin the granted
    /// ends (source read-only, destination writable), copy, unpin.
    private func copyOne(_ segment: GrantCopySegment, hv: SimulatedHypervisor) -> GrantStatus {
        let length = Int(segment.length)
        guard Self.fits(segment.source, length), Self.fits(segment.destination, length) else {
            return .badCopyArgument
        }
        let source = resolve(segment.source, writable: false, hv: hv)
        guard source.status.isOkay else { return source.status }
        defer { source.release() }
        let destination = resolve(segment.destination, writable: true, hv: hv)
        guard destination.status.isOkay else { return destination.status }
        defer { destination.release() }
        memmove(destination.address!, source.address!, length)
        return .okay
    }

    /// `offset + length <= 4096` for a granted end (`GNTST_bad_copy_arg`).
    private static func fits(_ end: GrantCopySegment.End, _ length: Int) -> Bool {
        if case .foreign(_, _, let offset) = end { return Int(offset) + length <= XenPage.size }
        return true
    }

    /// One end of a copy, pinned while the copy runs.
    private struct Pinned {
        var address: UnsafeMutableRawPointer?
        var status: GrantStatus
        var table: GrantTable?
        var ref = GrantRef(0)
        var writable = false

        func release() {
            guard let table else { return }
            table.lock.withLock { table.unpin(ref, writable: writable) }
        }
    }

    private func resolve(_ end: GrantCopySegment.End, writable: Bool, hv: SimulatedHypervisor) -> Pinned {
        switch end {
        case .local(let p):
            return Pinned(address: p, status: .okay)
        case .foreign(let id, let ref, let offset):
            guard let granter = hv.domain(id) else { return Pinned(status: .badDomain) }
            let table = granter.grantTable
            do {
                let frame = try table.lock.withLock { () throws(HypervisorError) in
                    try table.pin(ref, for: domain.domainID, writable: writable)
                }
                return Pinned(
                    address: granter.memory.page(Int(frame)) + Int(offset), status: .okay, table: table, ref: ref,
                    writable: writable)
            } catch {
                if case .grant(let status) = error.code { return Pinned(status: status) }
                return Pinned(status: .generalError)
            }
        }
    }

    func close() {
        domain.withLock { closed = true }
    }
}
