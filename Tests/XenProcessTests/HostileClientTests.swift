import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulatorDaemon
@testable import XenSimulatorClient

extension ProcessTests {
    /// A process speaking nonsense to the daemon gets errors (or is dropped) and
    /// harms nobody else.
    @Suite struct HostileClientTests {
        func call(_ fd: Int32, _ m: WireMessage) -> WireMessage? {
            guard Wire.send(fd, m) else { return nil }
            return Wire.receive(fd)
        }

        @Test func nonsenseGetsErrorsAndOthersAreUnharmed() async throws {
            let f = try DaemonFixture()
            try await withCleanup {
                let dir = f.dir
                // Joins, shares, maps and the hostile requests are round trips to the daemon,
                // blocking: on a thread of their own, never the cooperative pool.
                let (honest, shared) = try await onThread {
                    let honest = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                    return (honest, try honest.openGrantSharer().sharePages(count: 1, with: .dom0, writable: true))
                }
                defer { honest.close() }

                let fd = try rawConnection(dir + "/hv.sock")
                defer { close(fd) }
                let me = try await onThread { () throws -> UInt64 in
                    // Before joining, nothing but join is accepted.
                    #expect(call(fd, WireMessage([DaemonOp.map.rawValue, 1, 1, 0, UInt64(shared.refs[0].rawValue)]))?.error != nil)
                    // Unknown operations and malformed joins are refused.
                    #expect(call(fd, WireMessage([999]))?.error?.code == .errno(.invalidArgument))
                    #expect(call(fd, WireMessage([DaemonOp.join.rawValue]))?.error != nil)
                    #expect(call(fd, WireMessage([DaemonOp.join.rawValue, 1, 3, 0]))?.error?.code == .errno(.invalidArgument))  // 3 frames
                    // Join properly, then try what a guest may not do.
                    let joined = try #require(call(fd, WireMessage([DaemonOp.join.rawValue, 1, 64, 0])))
                    #expect(joined.error == nil)
                    for f in joined.fds { close(f) }
                    let me = UInt64(joined.words[1])
                    #expect(call(fd, WireMessage([DaemonOp.foreignAccess.rawValue, UInt64(honest.domainID.rawValue)]))?.error?.code
                            == .errno(.notPermitted))
                    #expect(call(fd, WireMessage([DaemonOp.report.rawValue]))?.error?.code == .errno(.notPermitted))
                    // The honest guest's grant is for dom0, not for us; a huge or empty ref list is malformed.
                    let steal = call(fd, WireMessage([DaemonOp.map.rawValue, UInt64(honest.domainID.rawValue), 0, 0, UInt64(shared.refs[0].rawValue)]))
                    #expect(steal?.error?.code == .grant(.permissionDenied) && steal?.fds.isEmpty == true)
                    #expect(call(fd, WireMessage([DaemonOp.map.rawValue, UInt64(honest.domainID.rawValue), 0, 0]))?.error != nil)
                    #expect(call(fd, WireMessage([DaemonOp.map.rawValue, 1, 0, 0] + Array(repeating: 8, count: 300)))?.error != nil)
                    // Unmapping, unbinding and peering what is not ours.
                    #expect(call(fd, WireMessage([DaemonOp.unmap.rawValue, 12345]))?.error?.code == .grant(.badHandle))
                    #expect(call(fd, WireMessage([DaemonOp.unbind.rawValue, 1]))?.error != nil)
                    #expect(call(fd, WireMessage([DaemonOp.peer.rawValue, 1]))?.error != nil)
                    // Binding to a port that is not unbound for us, and a bind without its wake descriptor.
                    #expect(call(fd, WireMessage([DaemonOp.bindInterdomain.rawValue, 0, 1]))?.error != nil)
                    #expect(call(fd, WireMessage([DaemonOp.bindUnbound.rawValue, 0]))?.error != nil)
                    // A record too short to parse: the daemon drops this connection, and with it our domain.
                    var junk: [UInt8] = [1, 0]
                    _ = send(fd, &junk, 2, 0)
                    return me
                }
                #expect(await eventually { !f.daemon.report().domains.contains(DomainID(UInt16(me))) })

                // The honest guest is untouched: dom0 still maps its grant.
                try await onThread {
                    let dom0 = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .dom0, onDaemonLost: ignoreLoss)
                    defer { dom0.close() }
                    let mapper = try dom0.openGrantMapper()
                    let mapping = try mapper.map(shared.refs[0], from: honest.domainID, writable: true)
                    try mapper.unmap(mapping)
                }
            } cleanup: {
                await f.stop()
            }
        }
    }
}
