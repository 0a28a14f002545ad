import CXen
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// xengntshr-style sharing and the page allocator.
@Suite(.timeLimit(.minutes(5)))
struct SharingAndPagesTests {
    @Test func sharedPagesAreGrantedAndUnsharedCleanly() throws {
        let m = try Machine(guestFrames: 32)
        let sharer = try m.guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 3, with: .dom0, writable: true)
        #expect(shared.refs.count == 3)
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(shared.refs, from: m.guest.domainID, writable: true)
        mapping.memory.page(2).storeBytes(of: 42, as: UInt64.self)
        #expect(shared.memory.page(2).load(as: UInt64.self) == 42)

        // Busy while mapped, and nothing changed by the refusal.
        #expect(hypervisorError { try sharer.unshare(shared) }?.code == .busy)
        for ref in shared.refs { #expect(m.guest.grantEntry(ref).pointee.flags & UInt16(GTF_permit_access) != 0) }
        try mapper.unmap(mapping)
        try sharer.unshare(shared)
        #expect(m.guest.outstanding().isEmpty)
        // Unsharing twice, or something never shared, is refused.
        #expect(hypervisorError { try sharer.unshare(shared) }?.code == .errno(.invalidArgument))
        // The pages went back: a new share of the whole memory fits.
        let again = try sharer.sharePages(count: 32, with: .dom0, writable: false)
        try sharer.unshare(again)
    }

    @Test func aPartlyMappedShareIsRestoredOnRefusal() throws {
        let m = try Machine(guestFrames: 8)
        let sharer = try m.guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 3, with: .dom0, writable: false)
        let mapper = try m.dom0.openGrantMapper()
        let last = try mapper.map(shared.refs[2], from: m.guest.domainID, writable: false)
        #expect(hypervisorError { try sharer.unshare(shared) }?.code == .busy)
        // The first two, ended before the refusal, are granted again.
        let granted = Set(m.guest.outstanding().grants.map(\.ref))
        #expect(granted == Set(shared.refs))
        try mapper.unmap(last)
        try sharer.unshare(shared)
    }

    @Test func allocatorHandsOutZeroedRunsAndRefusesToFreeGrantedFrames() throws {
        let m = try Machine(guestFrames: 8)
        let alloc = m.guest.pageAllocator
        let a = try alloc.allocatePages(3)
        a.memory.page(0).storeBytes(of: 0xFF, as: UInt8.self)
        let b = try alloc.allocatePages(5)
        #expect(hypervisorError { _ = try alloc.allocatePages(1) }?.code == .errno(.noMemory))
        #expect(b.first.rawValue == 3)
        let ref = try m.guest.grantAccess(frame: a.frame(1), to: .dom0, readOnly: true)
        #expect(hypervisorError { try alloc.freePages(a) }?.code == .errno(.resourceBusy))
        try m.guest.endAccess(ref)
        try alloc.freePages(a)
        #expect(hypervisorError { try alloc.freePages(a) }?.code == .errno(.invalidArgument))
        let c = try alloc.allocatePages(3)
        #expect(c.memory.page(0).load(as: UInt8.self) == 0)
        // Pages of another domain are not ours to free.
        let foreign = try m.dom0.pageAllocator.allocatePages(1)
        #expect(hypervisorError { try alloc.freePages(foreign) }?.code == .errno(.invalidArgument))
    }
}
