import CXenLibs
import Glibc
import Synchronization
import XenABI
import XenHypervisor

/// `GrantMapper` on `xengnttab`.
final class XenGrantMapper: GrantMapper {
    private let lib: LibXen
    // The libxen handle is an fd wrapper whose calls are single ioctls, safe
    // from any thread; it is only released once, by close().
    nonisolated(unsafe) private let handle: LibXen.Handle
    private let closed = Atomic<Bool>(false)
    private let nextHandle = Atomic<UInt32>(1)

    init(_ lib: LibXen) throws(HypervisorError) {
        guard let handle = lib.gnttabOpen() else { throw .libxen(lib, "xengnttab_open") }
        self.lib = lib
        self.handle = handle
    }

    deinit { close() }

    func map(_ ref: GrantRef, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        var one = ref
        return try withUnsafePointer(to: &one) { (p) throws(HypervisorError) -> GrantMapping in
            try map(UnsafeBufferPointer(start: p, count: 1), from: domain, writable: writable)
        }
    }

    func map(_ refs: UnsafeBufferPointer<GrantRef>, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        try checkOpen()
        guard let base = refs.baseAddress, !refs.isEmpty else {
            throw .errno(.invalidArgument, "map of no grant references")
        }
        let prot = PROT_READ | (writable ? PROT_WRITE : 0)
        // GrantRef is a frozen single-UInt32 struct, so the buffer is a C
        // uint32_t array; the library takes it non-const but only reads it.
        let address = base.withMemoryRebound(to: UInt32.self, capacity: refs.count) { p in
            lib.gnttabMapDomainGrantRefs(handle, UInt32(refs.count), UInt32(domain.rawValue), UnsafeMutablePointer(mutating: p), prot)
        }
        guard let address else { throw .libxen(lib, "xengnttab_map_domain_grant_refs(\(refs.count) from \(domain))") }
        let id = nextHandle.wrappingAdd(1, ordering: .relaxed).oldValue
        return GrantMapping(domain: domain, memory: MappedPages(base: address, count: refs.count),
                            handle: GrantHandle(id), writable: writable)
    }

    func unmap(_ mapping: GrantMapping) throws(HypervisorError) {
        try checkOpen()
        guard lib.gnttabUnmap(handle, mapping.memory.base, UInt32(mapping.memory.count)) == 0 else {
            throw .libxen(lib, "xengnttab_unmap(\(mapping.handle))")
        }
    }

    func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError) {
        try checkOpen()
        guard !segments.isEmpty else { return }
        let result = withUnsafeTemporaryAllocation(of: xengnttab_grant_copy_segment.self, capacity: segments.count) { c in
            for (i, s) in segments.enumerated() {
                var seg = xengnttab_grant_copy_segment()
                seg.len = s.length
                seg.flags = Self.encode(s.source, into: &seg.source, flag: UInt16(GNTCOPY_source_gref))
                    | Self.encode(s.destination, into: &seg.dest, flag: UInt16(GNTCOPY_dest_gref))
                c[i] = seg
            }
            let r = lib.gnttabGrantCopy(handle, UInt32(segments.count), c.baseAddress!)
            for i in segments.indices { segments[i].status = GrantStatus(rawValue: c[i].status) }
            return r
        }
        guard result == 0 else { throw .libxen(lib, "xengnttab_grant_copy(\(segments.count) segments)") }
    }

    private static func encode(_ end: GrantCopySegment.End, into ptr: inout xengnttab_copy_ptr, flag: UInt16) -> UInt16 {
        switch end {
        case .local(let address):
            ptr.virt = address
            return 0
        case .foreign(let domain, let ref, let offset):
            ptr.foreign.ref = ref.rawValue
            ptr.foreign.offset = offset
            ptr.foreign.domid = domain.rawValue
            return flag
        }
    }

    private func checkOpen() throws(HypervisorError) {
        if closed.load(ordering: .acquiring) { throw HypervisorError(.closed, "grant mapper") }
    }

    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = lib.gnttabClose(handle)
    }
}
