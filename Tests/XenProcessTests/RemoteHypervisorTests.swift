import Foundation
import TestSupport
import Testing
import XenABI
import XenHypervisor
import XenRingBenchmark
import XenSimulatorDaemon
import XenSimulatorClient

extension ProcessTests {
    /// Joined clients of one daemon (in this process, over the daemon's socket):
    /// the grant checks, the unchanged ring engine, and clean release.
    @Suite(.serialized)
    struct RemoteHypervisorTests {
        @Test func mapOfAGrantMeantForAnotherDomainIsRefused() async throws {
            let f = try DaemonFixture()
            try await withCleanup {
                let dir = f.dir
                // Joins, shares, maps and reports are round trips to the daemon, blocking: on a
                // thread of their own, never the cooperative pool.
                let dom0 = try await onThread { () throws -> RemoteHypervisor in
                    let a = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    let b = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    let dom0 = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .dom0, onDaemonLost: ignoreLoss)
                    #expect(a.domainID != b.domainID && a.domainID != .dom0)

                    // A grants a page to dom0, read-only, and writes into it.
                    let sharer = try a.openGrantSharer()
                    let shared = try sharer.sharePages(count: 1, with: .dom0, writable: false)
                    shared.memory.base.storeBytes(of: 0x5EED, as: UInt32.self)

                    // B may not map it: the daemon checks A's table (GNTST_permission_denied).
                    let bMapper = try b.openGrantMapper()
                    do throws(HypervisorError) {
                        _ = try bMapper.map(shared.refs[0], from: a.domainID, writable: false)
                        Issue.record("B mapped a grant meant for dom0")
                    } catch {
                        #expect(error.code == .grant(.permissionDenied), "\(error)")
                    }
                    // Nor copy from it: a guest gets no foreign access.
                    // A buffer of its own: `&variable` would be a pointer that outlives the call making it.
                    let buffer = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
                    buffer.initialize(to: 0)
                    defer { buffer.deallocate() }
                    var seg = [GrantCopySegment(source: .foreign(domain: a.domainID, ref: shared.refs[0], offset: 0),
                                                destination: .local(buffer), length: 4)]
                    try seg.withUnsafeMutableBufferPointer { try bMapper.copy($0) }
                    #expect(seg[0].status == .permissionDenied && buffer.pointee == 0)
                    // A reference that was never granted, and a writable map of a read-only grant, fail too.
                    let dom0Mapper = try dom0.openGrantMapper()
                    #expect(throws: HypervisorError.self) { try dom0Mapper.map(GrantRef(4000), from: a.domainID, writable: false) }
                    #expect(throws: HypervisorError.self) { try dom0Mapper.map(shared.refs[0], from: a.domainID, writable: true) }

                    // dom0, the grantee, maps it and sees A's bytes; dom0's grant copy reads them directly.
                    let mapping = try dom0Mapper.map(shared.refs[0], from: a.domainID, writable: false)
                    #expect(mapping.memory.base.load(as: UInt32.self) == 0x5EED)
                    seg[0].status = .generalError
                    try seg.withUnsafeMutableBufferPointer { try dom0Mapper.copy($0) }
                    #expect(seg[0].status == .okay && buffer.pointee == 0x5EED)
                    // While mapped, A cannot end the grant; afterwards it can.
                    #expect(throws: HypervisorError.self) { try sharer.unshare(shared) }
                    try dom0Mapper.unmap(mapping)
                    try sharer.unshare(shared)
                    #expect(try dom0.report().mappings == 0)

                    a.close()
                    b.close()
                    return dom0
                }
                #expect(await eventually { await onThread { (try? dom0.report().domains) == [.dom0] } })
                dom0.close()
            } cleanup: {
                await f.stop()
            }
        }

        @Test func theRingEngineRunsUnchangedOnRemoteHypervisors() async throws {
            let f = try DaemonFixture()
            try await withCleanup {
                let dir = f.dir
                let daemon = f.daemon
                // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
                try await onThread {
                    let guest = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    let dom0 = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .dom0, onDaemonLost: ignoreLoss)
                    for mode in [RingBenchmarkConfiguration.Mode.event, .adaptive] {
                        let config = RingBenchmarkConfiguration(mode: mode, requests: 20_000, queueDepth: 8, frontCPU: nil, backCPU: nil)
                        let session = try RingBenchmarkSession(configuration: config, frontend: guest, backend: dom0)
                        let before = daemon.report().calls
                        let result = try session.run()
                        let during = daemon.report().calls - before
                        session.close()
                        #expect(result.front.pushes > 0 && result.back.pushes > 0)
                        // Events crossed the channel pages, whatever the timing: a fresh ring's first
                        // push on each side always notifies (SHARED_RING_INIT arms req_event and
                        // rsp_event at 1); and a sleep ends only on an event (an abort would have
                        // thrown), each taking at least one of the peer's notifies, plus for the
                        // backend the one Xen sets pending when it binds its port.
                        #expect(result.front.notifies >= 1 && result.back.notifies >= 1, "no event crossed the channel pages")
                        #expect(result.back.sleeps <= result.front.notifies + 1 && result.front.sleeps <= result.back.notifies,
                                "a sleep ended without an event: \(result.front) \(result.back)")
                        // The data path never asks the daemon: at most the one look-up of the
                        // peer's wake end per side, however many requests and notifies.
                        #expect(during <= 2, "\(during) daemon calls for \(result.front.notifies + result.back.notifies) notifies")
                    }
                    // Everything set up for the runs was released.
                    let report = daemon.report()
                    #expect(report.mappings == 0 && report.ports == 0, "\(report)")
                    guest.close()
                    dom0.close()
                }
            } cleanup: {
                await f.stop()
            }
        }

        @Test func aGuestThatLeavesTakesItsPortsAndMappingsWithIt() async throws {
            let f = try DaemonFixture()
            try await withCleanup {
                let dir = f.dir
                // Joins, binds, shares, maps and reports are round trips to the daemon, blocking:
                // on a thread of their own, never the cooperative pool.
                let (guest, dom0, gEvents, gPort, dEvents, dPort, mapper, mapping) = try await onThread {
                    () throws -> (RemoteHypervisor, RemoteHypervisor, any EventChannels, EventPort, any EventChannels, EventPort,
                                  any GrantMapper, GrantMapping) in
                    let guest = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    let dom0 = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .dom0, onDaemonLost: ignoreLoss)
                    let shared = try guest.openGrantSharer().sharePages(count: 2, with: .dom0, writable: true)
                    let gEvents = try guest.openEventChannels()
                    let gPort = try gEvents.bindUnbound(remote: .dom0)
                    let dEvents = try dom0.openEventChannels()
                    let dPort = try dEvents.bindInterdomain(remote: guest.domainID, remotePort: gPort)
                    let mapper = try dom0.openGrantMapper()
                    let mapping = try mapper.map(shared.refs, from: guest.domainID, writable: true)
                    return (guest, dom0, gEvents, gPort, dEvents, dPort, mapper, mapping)
                }
                // Events flow both ways through the channel page and the wake pipes. Each side
                // looks (a poll that does not wait) between sleeps, never holding a pool thread.
                try gEvents.notify(gPort)
                #expect(try await eventually { try dEvents.wait(timeoutMilliseconds: 0) })
                var fired: [EventPort] = []
                while let p = try dEvents.pending() { fired.append(p); try dEvents.unmask(p) }
                #expect(fired.contains(dPort))
                try dEvents.notify(dPort)
                #expect(try await eventually { try gEvents.wait(timeoutMilliseconds: 0) })
                #expect(try gEvents.pending() == gPort)
                try gEvents.unmask(gPort)

                // The guest goes (as if its process died): dom0's notify now fails, its
                // mapping stays valid until it unmaps, then nothing is left.
                guest.close()
                #expect(await eventually { await onThread { (try? dom0.report().domains) == [.dom0] } })
                #expect(throws: HypervisorError.self) { try dEvents.notify(dPort) }
                mapping.memory.base.storeBytes(of: 1, as: UInt8.self)
                let report = try await onThread { () throws -> DaemonReport in
                    try mapper.unmap(mapping)
                    try dEvents.unbind(dPort)
                    return try dom0.report()
                }
                #expect(report.mappings == 0 && report.ports == 0, "\(report)")
                dom0.close()
            } cleanup: {
                await f.stop()
            }
        }
    }
}
