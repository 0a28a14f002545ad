import CXen
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// Grant tables v1: the entry protocol of grant_table.h, real second mappings,
/// and every status Xen answers with.
@Suite(.timeLimit(.minutes(5)))
struct GrantTableTests {
    @Test func entryLayoutIsXens() {
        #expect(MemoryLayout<grant_entry_v1>.size == 8)
        #expect(MemoryLayout<grant_entry_v1>.offset(of: \.flags) == 0)
        #expect(MemoryLayout<grant_entry_v1>.offset(of: \.domid) == 2)
        #expect(MemoryLayout<grant_entry_v1>.offset(of: \.frame) == 4)
        #expect(GrantTable.entriesPerFrame == 512)
    }

    @Test func grantWritesTheEntryAsTheHeaderSays() throws {
        let m = try Machine()
        let ref = try m.guest.grantAccess(frame: FrameNumber(5), to: .dom0, readOnly: true)
        #expect(ref.rawValue >= GrantRef.reservedCount)
        let e = m.guest.grantEntry(ref).pointee
        #expect(e.domid == 0)
        #expect(e.frame == 5)
        #expect(e.flags == UInt16(GTF_permit_access | GTF_readonly))
        try m.guest.endAccess(ref)
        #expect(m.guest.grantEntry(ref).pointee.flags == 0)
        // Ending twice is the guest's bug, answered, not trapped.
        #expect(grantStatus { try m.guest.endAccess(ref) } == .badGrantRef)
    }

    @Test func writesThroughAMappingAreTheGrantersFrameAndBack() throws {
        let m = try Machine()
        let page = try m.guest.pageAllocator.allocatePages(1)
        let ref = try m.guest.grantAccess(frame: page.first, to: .dom0, readOnly: false)
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(ref, from: m.guest.domainID, writable: true)
        let mine = m.guest.memory(of: page.first)
        #expect(mapping.memory.base != mine)  // a second view, not the same address

        mapping.memory.base.storeBytes(of: 0xDEAD_BEEF, toByteOffset: 100, as: UInt32.self)
        #expect(mine.load(fromByteOffset: 100, as: UInt32.self) == 0xDEAD_BEEF)
        mine.storeBytes(of: 0x1234_5678, toByteOffset: 4092, as: UInt32.self)
        #expect(mapping.memory.base.load(fromByteOffset: 4092, as: UInt32.self) == 0x1234_5678)

        // Xen's flags while mapped writable, gone after unmap.
        #expect(m.guest.grantEntry(ref).pointee.flags == UInt16(GTF_permit_access | GTF_reading | GTF_writing))
        try mapper.unmap(mapping)
        #expect(m.guest.grantEntry(ref).pointee.flags == UInt16(GTF_permit_access))
        try m.guest.endAccess(ref)
    }

    @Test func readOnlyMapSetsOnlyReading() throws {
        let m = try Machine()
        let ref = try m.guest.grantAccess(frame: FrameNumber(3), to: .dom0, readOnly: true)
        let mapper = try m.dom0.openGrantMapper()
        let a = try mapper.map(ref, from: m.guest.domainID, writable: false)
        let b = try mapper.map(ref, from: m.guest.domainID, writable: false)
        #expect(m.guest.grantEntry(ref).pointee.flags == UInt16(GTF_permit_access | GTF_readonly | GTF_reading))
        try mapper.unmap(a)
        // One mapping left: still reading.
        #expect(m.guest.grantEntry(ref).pointee.flags & UInt16(GTF_reading) != 0)
        try mapper.unmap(b)
        #expect(m.guest.grantEntry(ref).pointee.flags == UInt16(GTF_permit_access | GTF_readonly))
        try m.guest.endAccess(ref)
    }

    @Test func endAccessIsRefusedWhileMapped() throws {
        let m = try Machine()
        let ref = try m.guest.grantAccess(frame: FrameNumber(1), to: .dom0, readOnly: false)
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(ref, from: m.guest.domainID, writable: true)
        #expect(hypervisorError { try m.guest.endAccess(ref) }?.code == .busy)
        // Refusal changed nothing: still granted and mapped.
        #expect(m.guest.grantEntry(ref).pointee.flags == UInt16(GTF_permit_access | GTF_reading | GTF_writing))
        try mapper.unmap(mapping)
        try m.guest.endAccess(ref)
    }

    @Test func aDomainCannotMapAGrantMeantForAnother() throws {
        let hv = SimulatedHypervisor(dom0Frames: 16)
        let front = try hv.createDomain(frames: 16)
        let other = try hv.createDomain(frames: 16)
        let ref = try front.grantAccess(frame: FrameNumber(2), to: other.domainID, readOnly: false)
        // Not even privileged dom0 may use a grant made for someone else.
        let dom0Mapper = try hv.dom0.openGrantMapper()
        #expect(grantStatus { _ = try dom0Mapper.map(ref, from: front.domainID, writable: false) } == .permissionDenied)
        let otherMapper = try other.openGrantMapper()
        let mapping = try otherMapper.map(ref, from: front.domainID, writable: true)
        // While other maps it, dom0 is still refused.
        #expect(grantStatus { _ = try dom0Mapper.map(ref, from: front.domainID, writable: false) } == .permissionDenied)
        try otherMapper.unmap(mapping)
        try front.endAccess(ref)
        #expect(hv.shutdown().isEmpty)
    }

    @Test func everyMapCheckHasXensStatus() throws {
        let m = try Machine(guestFrames: 8)
        let mapper = try m.dom0.openGrantMapper()
        let g = m.guest.domainID

        // Unknown domain.
        #expect(grantStatus { _ = try mapper.map(GrantRef(8), from: DomainID(77), writable: false) } == .badDomain)
        // Reference beyond the table.
        let beyond = GrantRef(UInt32(m.guest.grantTableSize))
        #expect(grantStatus { _ = try mapper.map(beyond, from: g, writable: false) } == .badGrantRef)
        #expect(grantStatus { _ = try mapper.map(GrantRef(.max), from: g, writable: false) } == .badGrantRef)
        // Entry never granted (GTF_invalid).
        #expect(grantStatus { _ = try mapper.map(GrantRef(100), from: g, writable: false) } == .badGrantRef)
        // Entry of another type: GTF_accept_transfer.
        let raw = m.guest.grantEntry(GrantRef(101))
        raw.pointee = grant_entry_v1(flags: UInt16(GTF_accept_transfer), domid: 0, frame: 1)
        #expect(grantStatus { _ = try mapper.map(GrantRef(101), from: g, writable: false) } == .badGrantRef)
        // Sub-page flag (v2 only) is not mappable.
        raw.pointee = grant_entry_v1(flags: UInt16(GTF_permit_access | GTF_sub_page), domid: 0, frame: 1)
        #expect(grantStatus { _ = try mapper.map(GrantRef(101), from: g, writable: false) } == .badGrantRef)
        // Writable map of a read-only grant.
        let ro = try m.guest.grantAccess(frame: FrameNumber(1), to: .dom0, readOnly: true)
        #expect(grantStatus { _ = try mapper.map(ro, from: g, writable: true) } == .permissionDenied)
        #expect(m.guest.grantEntry(ro).pointee.flags == UInt16(GTF_permit_access | GTF_readonly))  // untouched
        // Frame the granter does not own: it has 8.
        let far = try m.guest.grantAccess(frame: FrameNumber(8), to: .dom0, readOnly: false)
        #expect(grantStatus { _ = try mapper.map(far, from: g, writable: true) } == .badPage)
        // The failed pin left no flags behind: access can end.
        try m.guest.endAccess(far)
        let huge = try m.guest.grantAccess(frame: FrameNumber(UInt64(UInt32.max)), to: .dom0, readOnly: false)
        #expect(grantStatus { _ = try mapper.map(huge, from: g, writable: false) } == .badPage)
        try m.guest.endAccess(huge)
        try m.guest.endAccess(ro)
        raw.pointee = grant_entry_v1()
        // Unmap of a handle this mapper never made, and of one already gone.
        let ok = try m.guest.grantAccess(frame: FrameNumber(2), to: .dom0, readOnly: false)
        let mapping = try mapper.map(ok, from: g, writable: true)
        let forged = GrantMapping(domain: g, memory: mapping.memory, handle: GrantHandle(999), writable: true)
        #expect(grantStatus { try mapper.unmap(forged) } == .badHandle)
        let otherMapper = try m.dom0.openGrantMapper()
        #expect(grantStatus { try otherMapper.unmap(mapping) } == .badHandle)
        try mapper.unmap(mapping)
        #expect(grantStatus { try mapper.unmap(mapping) } == .badHandle)
        try m.guest.endAccess(ok)
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func aGuestRewritingItsEntryCannotCrashOrFoolTheHypervisor() throws {
        let m = try Machine(guestFrames: 8)
        let mapper = try m.dom0.openGrantMapper()
        let ref = try m.guest.grantAccess(frame: FrameNumber(2), to: .dom0, readOnly: false)
        let mapping = try mapper.map(ref, from: m.guest.domainID, writable: true)
        // While pinned, the guest points the entry at a frame it does not own
        // and at another domain: the hypervisor keeps the frame it pinned.
        m.guest.grantEntry(ref).pointee.frame = 1_000_000
        let second = try mapper.map(ref, from: m.guest.domainID, writable: false)
        m.guest.memory(of: FrameNumber(2)).storeBytes(of: 7, as: UInt8.self)
        #expect(second.memory.base.load(as: UInt8.self) == 7)
        try mapper.unmap(second)
        try mapper.unmap(mapping)
        // Now unpinned, the rewritten frame is checked again.
        #expect(grantStatus { _ = try mapper.map(ref, from: m.guest.domainID, writable: false) } == .badPage)
        m.guest.grantEntry(ref).pointee.frame = 2
        try m.guest.endAccess(ref)
    }

    @Test func batchMapIsAllOrNothing() throws {
        let m = try Machine(guestFrames: 16)
        let mapper = try m.dom0.openGrantMapper()
        var refs: [GrantRef] = []
        for f in 0..<4 { refs.append(try m.guest.grantAccess(frame: FrameNumber(UInt64(f)), to: .dom0, readOnly: false)) }
        // Contiguous, in order.
        let all = try mapper.map(refs, from: m.guest.domainID, writable: true)
        for i in 0..<4 {
            m.guest.memory(of: FrameNumber(UInt64(i))).storeBytes(of: UInt8(i + 1), as: UInt8.self)
            #expect(all.memory.page(i).load(as: UInt8.self) == UInt8(i + 1))
        }
        try mapper.unmap(all)

        // One bad entry (the third, read-only) fails the batch, names its status, maps nothing.
        let ro = try m.guest.grantAccess(frame: FrameNumber(9), to: .dom0, readOnly: true)
        let batch = [refs[0], refs[1], ro, refs[3]]
        let error = hypervisorError { _ = try mapper.map(batch, from: m.guest.domainID, writable: true) }
        #expect(error?.code == .grant(.permissionDenied))
        #expect(error?.message.contains("entry 2") == true)
        for ref in refs + [ro] {
            #expect(m.guest.grantEntry(ref).pointee.flags & UInt16(GTF_reading | GTF_writing) == 0)
            try m.guest.endAccess(ref)
        }
        #expect(m.dom0.outstanding().isEmpty)
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func grantCopyChecksBoundsAndReportsEachSegment() throws {
        let m = try Machine(guestFrames: 8)
        let mapper = try m.dom0.openGrantMapper()
        let g = m.guest.domainID
        let rw = try m.guest.grantAccess(frame: FrameNumber(1), to: .dom0, readOnly: false)
        let ro = try m.guest.grantAccess(frame: FrameNumber(2), to: .dom0, readOnly: true)
        let guestRW = m.guest.memory(of: FrameNumber(1))
        let guestRO = m.guest.memory(of: FrameNumber(2))
        for i in 0..<4096 { guestRO.storeBytes(of: UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }

        let local = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { local.deallocate() }
        memset(local, 0xAB, 8192)

        var segments = [
            // 0: foreign to local, exactly to the end of the page.
            GrantCopySegment(source: .foreign(domain: g, ref: ro, offset: 96), destination: .local(local), length: 4000),
            // 1: local to foreign.
            GrantCopySegment(source: .local(local + 4096), destination: .foreign(domain: g, ref: rw, offset: 10), length: 16),
            // 2: one byte past the page end.
            GrantCopySegment(source: .foreign(domain: g, ref: ro, offset: 97), destination: .local(local), length: 4000),
            // 3: destination past the end.
            GrantCopySegment(source: .local(local), destination: .foreign(domain: g, ref: rw, offset: 4095), length: 2),
            // 4: writing into a read-only grant.
            GrantCopySegment(source: .local(local), destination: .foreign(domain: g, ref: ro, offset: 0), length: 1),
            // 5: unknown domain.
            GrantCopySegment(source: .foreign(domain: DomainID(99), ref: ro, offset: 0), destination: .local(local), length: 1),
            // 6: bad reference.
            GrantCopySegment(source: .foreign(domain: g, ref: GrantRef(1 << 30), offset: 0), destination: .local(local), length: 1),
            // 7: foreign to foreign.
            GrantCopySegment(source: .foreign(domain: g, ref: ro, offset: 0), destination: .foreign(domain: g, ref: rw, offset: 100), length: 8),
        ]
        try segments.withUnsafeMutableBufferPointer { try mapper.copy($0) }
        #expect(segments.map(\.status) == [.okay, .okay, .badCopyArgument, .badCopyArgument, .permissionDenied, .badDomain, .badGrantRef, .okay])
        #expect(local.load(fromByteOffset: 0, as: UInt8.self) == 96)
        #expect(local.load(fromByteOffset: 3999, as: UInt8.self) == UInt8(truncatingIfNeeded: 4095))
        #expect(guestRW.load(fromByteOffset: 10, as: UInt8.self) == 0xAB)
        #expect(guestRW.load(fromByteOffset: 26, as: UInt8.self) == 0)
        #expect(guestRW.load(fromByteOffset: 107, as: UInt8.self) == 7)
        // Copies pin only while they run.
        #expect(m.guest.grantEntry(rw).pointee.flags == UInt16(GTF_permit_access))
        try m.guest.endAccess(rw)
        try m.guest.endAccess(ro)
    }

    @Test func reservedEntriesAreTheToolstacks() throws {
        let m = try Machine()
        try m.guest.grantReservedAccess(.xenstore, frame: FrameNumber(0), to: .dom0, readOnly: false)
        #expect(hypervisorError { try m.guest.grantReservedAccess(.xenstore, frame: FrameNumber(0), to: .dom0, readOnly: false) }?.code == .errno(.resourceBusy))
        #expect(hypervisorError { try m.guest.grantReservedAccess(GrantRef(8), frame: FrameNumber(0), to: .dom0, readOnly: false) }?.code == .errno(.invalidArgument))
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(GrantRef.xenstore, from: m.guest.domainID, writable: true)
        try mapper.unmap(mapping)
        try m.guest.endAccess(.xenstore)
        // Handed-out references never include the reserved ones.
        for _ in 0..<16 { #expect(try m.guest.grantAccess(frame: FrameNumber(0), to: .dom0, readOnly: true).rawValue >= 8) }
    }

    @Test func aFullTableSaysSo() throws {
        let hv = SimulatedHypervisor(dom0Frames: 4)
        let guest = try hv.createDomain(frames: 4, grantFrames: 1)
        for _ in 0..<(512 - 8) { _ = try guest.grantAccess(frame: FrameNumber(0), to: .dom0, readOnly: true) }
        #expect(hypervisorError { _ = try guest.grantAccess(frame: FrameNumber(0), to: .dom0, readOnly: true) }?.code == .errno(.noSpace))
        #expect(hv.destroyDomain(guest).grants.count == 512 - 8)
    }
}
