import CXenLibs
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenHost

/// The real-Xen adapters, driven through a scripted libxen: the exact calls a
/// driver's attach, I/O and detach make, and what every failure becomes.
@Suite(.timeLimit(.minutes(5)))
struct XenHostTests {
    let fake = ScriptedLibXen()
    var host: XenHost { XenHost(domainID: DomainID(0), library: fake.library) }

    @Test func backendAttachIODetachCallSequence() throws {
        let mapper = try host.openGrantMapper()
        let events = try host.openEventChannels()
        // Attach: map a two-page ring writable, bind the frontend's port.
        let ring = try mapper.map([GrantRef(8), GrantRef(9)], from: DomainID(3), writable: true)
        #expect(ring.memory.count == 2 && ring.memory.base == fake.page)
        let port = try events.bindInterdomain(remote: DomainID(3), remotePort: EventPort(17))
        // I/O: an event arrives, is handled, re-armed; a grant copy; a notify.
        fake.queuePending(Int32(port.rawValue))
        #expect(try events.pending() == port)
        #expect(try events.pending() == nil)
        try events.unmask(port)
        let local = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { local.deallocate() }
        var segments = [
            GrantCopySegment(source: .foreign(domain: DomainID(3), ref: GrantRef(40), offset: 512), destination: .local(local), length: 1024),
            GrantCopySegment(source: .local(local), destination: .foreign(domain: DomainID(3), ref: GrantRef(41), offset: 0), length: 4096),
        ]
        try segments.withUnsafeMutableBufferPointer { try mapper.copy($0) }
        #expect(segments.allSatisfy { $0.status == .okay })
        try events.notify(port)
        // Detach.
        try events.unbind(port)
        try mapper.unmap(ring)
        events.close()
        mapper.close()
        mapper.close()  // idempotent

        #expect(fake.calls == [
            "gnttab_open", "evtchn_open",
            "gnttab_map(dom3 [8,9] rw)", "evtchn_bind_interdomain(dom3 17)",
            "evtchn_pending", "evtchn_pending", "evtchn_unmask(6)",
            "gnttab_copy(d3/r40+512->local:1024 local->d3/r41+0:4096)",
            "evtchn_notify(6)", "evtchn_unbind(6)", "gnttab_unmap(page 2)",
            "evtchn_close", "gnttab_close",
        ])
    }

    @Test func frontendShareBindDetachCallSequence() throws {
        let sharer = try host.openGrantSharer()
        let events = try host.openEventChannels()
        let ring = try sharer.sharePages(count: 2, with: DomainID(0), writable: true)
        #expect(ring.refs == [GrantRef(100), GrantRef(101)])
        let port = try events.bindUnbound(remote: DomainID(0))
        try sharer.unshare(ring)
        try events.unbind(port)
        sharer.close()
        events.close()
        #expect(fake.calls == [
            "gntshr_open", "evtchn_open", "gntshr_share(dom0 2 rw)", "evtchn_bind_unbound(dom0)",
            "gntshr_unshare(2)", "evtchn_unbind(6)", "gntshr_close", "evtchn_close",
        ])
    }

    @Test func everyLibxenFailureIsAClearSwiftError() throws {
        let cases: [(String, Int32, (XenHost) throws -> Void)] = [
            ("gnttab_open", ENOENT, { _ = try $0.openGrantMapper() }),
            ("gntshr_open", ENOENT, { _ = try $0.openGrantSharer() }),
            ("evtchn_open", EACCES, { _ = try $0.openEventChannels() }),
            ("gnttab_map", EINVAL, { _ = try $0.openGrantMapper().map(GrantRef(1), from: DomainID(2), writable: false) }),
            ("gntshr_share", ENOMEM, { _ = try $0.openGrantSharer().sharePages(count: 1, with: DomainID(2), writable: true) }),
            ("evtchn_bind_unbound", ENOSPC, { _ = try $0.openEventChannels().bindUnbound(remote: DomainID(2)) }),
            ("evtchn_notify", EINVAL, { try $0.openEventChannels().notify(EventPort(3)) }),
            ("evtchn_pending", EIO, { _ = try $0.openEventChannels().pending() }),
        ]
        for (call, code, body) in cases {
            let fake = ScriptedLibXen()
            fake.fail(call, errno: code)
            let host = XenHost(domainID: DomainID(0), library: fake.library)
            #expect(throws: HypervisorError.self, "\(call)") { try body(host) }
            do { try body(host) } catch let error as HypervisorError {
                #expect(error.code == .errno(.init(rawValue: code)), "\(call)")
                #expect(error.message.contains("failed"))
            }
            // Whatever failed, every handle that was opened is closed again.
            let opened = fake.calls.filter { $0.hasSuffix("_open") }.count
            let closed = fake.calls.filter { $0.hasSuffix("_close") }.count
            #expect(opened - closed <= 0 || call.hasSuffix("_open"), "\(call): \(fake.calls)")
        }
    }

    @Test func aClosedHandleRefusesWork() throws {
        let events = try host.openEventChannels()
        events.close()
        #expect(throws: HypervisorError(.closed, "event channel handle")) { try events.notify(EventPort(1)) }
        #expect(fake.calls == ["evtchn_open", "evtchn_close"])
    }

    @Test func withoutXenTheRealLibrariesFailCleanly() throws {
        guard !XenHost.isAvailable else {
            print("skipped: this machine has /dev/xen/evtchn; the real-Xen tests cover it")
            return
        }
        let host = XenHost(domainID: DomainID(0))
        do {
            _ = try host.openEventChannels()
            Issue.record("xenevtchn_open succeeded without Xen")
        } catch {
            #expect(error.description.contains("xenevtchn_open failed"))
        }
        #expect(throws: HypervisorError.self) { _ = try host.openGrantMapper() }
    }
}

/// Runs only inside a real Xen domain.
@Suite(.timeLimit(.minutes(5)), .enabled(if: XenHost.isAvailable, "needs a Xen domain with /dev/xen/evtchn"))
struct RealXenTests {
    @Test func openAndCloseEveryHandle() throws {
        let host = XenHost(domainID: DomainID(0))
        let events = try host.openEventChannels()
        let port = try events.bindUnbound(remote: DomainID(0))
        try events.unbind(port)
        events.close()
        try host.openGrantMapper().close()
    }
}
