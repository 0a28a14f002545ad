import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

@Suite(.timeLimit(.minutes(5)))
struct LeftoversTests {
    @Test func aCleanRunLeavesNothing() throws {
        let m = try Machine()
        let c = try Channel(m)
        let ref = try m.guest.grantAccess(frame: FrameNumber(1), to: .dom0, readOnly: false)
        let mapper = try m.dom0.openGrantMapper()
        try mapper.unmap(try mapper.map(ref, from: m.guest.domainID, writable: true))
        try m.guest.endAccess(ref)
        c.front.close()
        c.back.close()
        let left = m.hv.shutdown()
        #expect(left.isEmpty, "\(left)")
        #expect(left.description == "no leftovers")
    }

    @Test func aForgottenUnmapAndPortAreCaughtAndReallyReleased() throws {
        let m = try Machine()
        let g = m.guest.domainID
        let ref = try m.guest.grantAccess(frame: FrameNumber(4), to: .dom0, readOnly: false)
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(ref, from: g, writable: true)
        let c = try Channel(m)

        // Destroying the guest: its grant is still mapped by dom0, its port open.
        let left = m.hv.destroyDomain(m.guest)
        #expect(left.mappings == [.init(mapper: .dom0, granter: g, handle: mapping.handle, refs: [ref], writable: true)])
        #expect(left.grants == [.init(granter: g, ref: ref, grantee: .dom0, frame: FrameNumber(4), readOnly: false, inUse: true)])
        #expect(left.ports.map(\.port) == [c.frontPort])
        #expect(left.description.contains("dom0 maps dom1"))
        // dom0's mapping of the dead guest stays usable until dom0 lets go.
        mapping.memory.base.storeBytes(of: 9, as: UInt8.self)
        #expect(m.guest.memory(of: FrameNumber(4)).load(as: UInt8.self) == 9)

        // dom0 forgot to unmap and to close its port: shutdown reports both and unmaps.
        let name = m.guest.memoryName
        #expect(mappingCount(ofMemfd: name) == 2)  // the guest's own view and dom0's
        let end = m.hv.shutdown()
        #expect(end.mappings.map(\.handle) == [mapping.handle])
        #expect(end.ports == [.init(domain: .dom0, port: c.backPort, state: .unbound(remote: g))])
        // dom0's grant view is gone; the guest's own view lives as long as
        // something holds its SimulatedDomain (here `m`), so no stray pointer
        // into guest memory can fault.
        #expect(mappingCount(ofMemfd: name) == 1)
        // Its record went with it.
        #expect(grantStatus { try mapper.unmap(mapping) } == .badHandle)
    }

    @Test func aGuestsForgottenMappingIsUnmappedWhenItDies() throws {
        let hv = SimulatedHypervisor(dom0Frames: 8)
        let back = try hv.createDomain(frames: 8)  // a driver domain
        let front = try hv.createDomain(frames: 8)
        let ref = try front.grantAccess(frame: FrameNumber(1), to: back.domainID, readOnly: true)
        _ = try back.openGrantMapper().map(ref, from: front.domainID, writable: false)
        #expect(mappingCount(ofMemfd: front.memoryName) == 2)
        let left = hv.destroyDomain(back)
        #expect(left.mappings.map(\.mapper) == [back.domainID])
        #expect(mappingCount(ofMemfd: front.memoryName) == 1)
        // The front's entry is no longer in use: it can end access.
        try front.endAccess(ref)
        #expect(hv.destroyDomain(front).isEmpty)
        #expect(hv.destroyDomain(front).isEmpty)  // twice is a no-op
        #expect(hv.shutdown().isEmpty)
        #expect(hypervisorError { _ = try hv.createDomain(frames: 1) }?.code == .closed)
    }
}

@Test func aDroppedMachineUnmapsEverything() throws {
    var name = ""
    do {
        let hv = SimulatedHypervisor(dom0Frames: 8)
        let guest = try hv.createDomain(frames: 8)
        name = guest.memoryName
        let ref = try guest.grantAccess(frame: FrameNumber(1), to: .dom0, readOnly: false)
        _ = try hv.dom0.openGrantMapper().map(ref, from: guest.domainID, writable: true)
        #expect(mappingCount(ofMemfd: name) == 2)
    }
    #expect(mappingCount(ofMemfd: name) == 0)
}
