import CXen
import Foundation
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// A connected pair: the guest allocates an unbound port for dom0, dom0 binds
/// it. Xen marks the binder's new port pending; that event is drained here.
struct Channel {
    let front: SimulatedEventChannels
    let back: SimulatedEventChannels
    let frontPort: EventPort
    let backPort: EventPort

    init(_ m: Machine) throws {
        front = try m.guest.openSimulatedEventChannels()
        back = try m.dom0.openSimulatedEventChannels()
        frontPort = try front.bindUnbound(remote: .dom0)
        backPort = try back.bindInterdomain(remote: m.guest.domainID, remotePort: frontPort)
        #expect(try back.pending() == backPort)
        try back.unmask(backPort)
    }
}

@Suite(.timeLimit(.minutes(5)))
struct EventChannelTests {
    @Test func sharedInfoLayoutIsXens() {
        #expect(MemoryLayout<shared_info>.offset(of: \.evtchn_pending)! == 32 * MemoryLayout<vcpu_info>.size)
        #expect(EventDomain.portLimit == 4096)
        #expect(EventDomain.bitsPerWord == 64)
    }

    @Test func bindingFollowsXen() throws {
        let m = try Machine()
        let front = try m.guest.openEventChannels()
        let back = try m.dom0.openEventChannels()
        let port = try front.bindUnbound(remote: .dom0)
        #expect(port.rawValue >= 1)  // port 0 is reserved
        // Only the domain the port was allocated for may bind it.
        let third = try m.hv.createDomain(frames: 4)
        let thirdChannels = try third.openEventChannels()
        #expect(hypervisorError { _ = try thirdChannels.bindInterdomain(remote: m.guest.domainID, remotePort: port) }?.code == .errno(.invalidArgument))
        #expect(hypervisorError { _ = try back.bindInterdomain(remote: m.guest.domainID, remotePort: EventPort(999)) }?.code == .errno(.invalidArgument))
        #expect(hypervisorError { _ = try back.bindInterdomain(remote: DomainID(55), remotePort: port) }?.code == .errno(.noSuchProcess))
        #expect(hypervisorError { _ = try back.bindUnbound(remote: DomainID(55)) }?.code == .errno(.noSuchProcess))
        let backPort = try back.bindInterdomain(remote: m.guest.domainID, remotePort: port)
        // Xen conservatively sets the binder's new port pending.
        #expect(m.dom0.isEventPending(backPort))
        #expect(isReadable(back))
        #expect(try back.pending() == backPort)
        #expect(try back.pending() == nil)
        #expect(!isReadable(back))
        // Bound once: binding again is refused.
        #expect(hypervisorError { _ = try back.bindInterdomain(remote: m.guest.domainID, remotePort: port) }?.code == .errno(.invalidArgument))
        front.close()
        back.close()
        thirdChannels.close()
        #expect(m.hv.shutdown().isEmpty)
    }

    /// The sleeping thread is one of the test's own, started before the notify; the test
    /// awaits what it saw (never holding a cooperative-pool thread while it sleeps).
    @Test func notifyWakesAThreadSleepingInPoll() async throws {
        let m = try Machine()
        let c = try Channel(m)
        #expect(!isReadable(c.back))
        let back = c.back
        let (woke, answer) = AsyncStream.makeStream(of: Bool.self)
        Thread {
            // Bounded (180 s, TestSupport's minimumDeadline): a lost wakeup fails the test
            // instead of hanging it.
            answer.yield((try? back.wait(timeoutMilliseconds: 180_000)) == true)
            answer.finish()
        }.start()
        try await Task.sleep(for: .milliseconds(50))  // let it reach poll; the test is correct either way
        try c.front.notify(c.frontPort)
        var wokeUp = false
        for await w in woke { wokeUp = w }
        #expect(wokeUp)
        #expect(try c.back.pending() == c.backPort)
        // pending() masks the port and clears its bit, as the Linux driver.
        #expect(c.back.domain.isEventMasked(c.backPort))
        #expect(!c.back.domain.isEventPending(c.backPort))
        #expect(!isReadable(c.back))
        try c.back.unmask(c.backPort)
        #expect(try c.back.pending() == nil)
    }

    @Test func aMaskedPortStaysPendingAndFiresOnUnmask() throws {
        let m = try Machine()
        let c = try Channel(m)
        try c.front.notify(c.frontPort)
        #expect(try c.back.pending() == c.backPort)  // now masked
        try c.front.notify(c.frontPort)
        try c.front.notify(c.frontPort)  // coalesces: one pending bit
        #expect(m.dom0.isEventPending(c.backPort))
        #expect(!isReadable(c.back))
        #expect(try c.back.pending() == nil)
        try c.back.unmask(c.backPort)
        #expect(isReadable(c.back))
        #expect(try c.back.pending() == c.backPort)
        #expect(try c.back.pending() == nil)
        #expect(!isReadable(c.back))
        try c.back.unmask(c.backPort)
        #expect(!isReadable(c.back))
    }

    @Test func manyPortsOnOneDescriptorReportWhichFired() throws {
        let m = try Machine()
        let back = try m.dom0.openSimulatedEventChannels()
        let front = try m.guest.openSimulatedEventChannels()
        // 200 channels so the ports span several bitmap words.
        var pairs: [(front: EventPort, back: EventPort)] = []
        for _ in 0..<200 {
            let f = try front.bindUnbound(remote: .dom0)
            pairs.append((f, try back.bindInterdomain(remote: m.guest.domainID, remotePort: f)))
        }
        while let p = try back.pending() { try back.unmask(p) }
        #expect(!isReadable(back))
        let fire = [3, 64, 65, 130, 199].map { pairs[$0] }
        for pair in fire.reversed() { try front.notify(pair.front) }
        #expect(isReadable(back))
        var seen: Set<EventPort> = []
        while let p = try back.pending() { seen.insert(p) }
        #expect(seen == Set(fire.map(\.back)))
        #expect(!isReadable(back))
        // Events flow the other way on the same pairs.
        try back.notify(pairs[100].back)
        #expect(try front.pending() == pairs[100].front)
        // Another handle of the same domain does not see these ports.
        let other = try m.dom0.openEventChannels()
        try front.notify(pairs[5].front)
        #expect(try other.pending() == nil)
        #expect(!isReadable(other))
        #expect(hypervisorError { try other.notify(pairs[5].back) }?.code == .errno(.socketNotConnected))
        #expect(hypervisorError { try other.unmask(pairs[5].back) }?.code == .errno(.socketNotConnected))
        #expect(try back.pending() == pairs[5].back)
    }

    @Test func closeMakesTheRemoteNotifyFail() throws {
        let m = try Machine()
        let c = try Channel(m)
        try c.front.notify(c.frontPort)
        try c.back.unbind(c.backPort)
        // The closed port is gone from the fd, and the peer learns it.
        #expect(try c.back.pending() == nil)
        #expect(!isReadable(c.back))
        #expect(hypervisorError { try c.front.notify(c.frontPort) }?.code == .errno(.socketNotConnected))
        #expect(hypervisorError { try c.back.notify(c.backPort) }?.code == .errno(.socketNotConnected))
        #expect(hypervisorError { try c.back.unbind(c.backPort) }?.code == .errno(.socketNotConnected))
        // The front port is unbound for dom0 again: it can be rebound.
        let again = try c.back.bindInterdomain(remote: m.guest.domainID, remotePort: c.frontPort)
        try c.front.notify(c.frontPort)
        #expect(m.dom0.isEventPending(again))
        // Errors for nonsense ports.
        #expect(hypervisorError { try c.front.notify(EventPort(5000)) }?.code == .errno(.invalidArgument))
        #expect(hypervisorError { try c.front.notify(EventPort(0)) }?.code == .errno(.socketNotConnected))
        // A closed handle refuses everything; its ports are gone.
        c.front.close()
        #expect(hypervisorError { try c.front.notify(c.frontPort) }?.code == .closed)
        #expect(hypervisorError { _ = try c.front.pending() }?.code == .closed)
        #expect(hypervisorError { try c.back.notify(again) }?.code == .errno(.socketNotConnected))
        c.back.close()
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func aDestroyedPeerMakesNotifyFail() throws {
        let m = try Machine()
        let c = try Channel(m)
        let left = m.hv.destroyDomain(m.guest)
        #expect(left.ports == [.init(domain: m.guest.domainID, port: c.frontPort, state: .interdomain(remote: .dom0, remotePort: c.backPort))])
        #expect(hypervisorError { try c.back.notify(c.backPort) }?.code == .errno(.socketNotConnected))
        #expect(hypervisorError { try c.front.notify(c.frontPort) }?.code == .closed)
        #expect(hypervisorError { _ = try m.guest.openEventChannels() }?.code == .closed)
        c.back.close()
    }
}
