import CXen
import Foundation
import DriverTestSupport
import TestSupport
import Testing
import XenABI
import XenDriverRuntime
import XenHypervisor
import XenLocks
import XenNetBack
import XenNetProtocol
import XenRing
import XenSimulator

/// A frontend that writes raw tx slots. Each bad packet must be answered
/// with an error, counted, and leave the vif serving the next good one.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct NetHostileFrontendTests {
    /// Pushes `slots`, then one good packet, and returns the statuses of
    /// every response in order.
    private func run(_ f: NetFixture, _ slots: [netif_tx_request]) async throws -> [Int16] {
        var tx = try FrontRing<netif_tx_request, netif_tx_response>(initializing: f.txRing.memory)
        var rx = try FrontRing<netif_rx_request, netif_rx_response>(initializing: f.rxRing.memory)
        _ = rx.pushRequests()
        try f.startBackend()
        let good = netif_tx_request(gref: f.txPool.refs[0].rawValue, offset: 0, flags: 0, id: 999, size: 60)
        return try await exchange(slots + [good], on: &tx, events: f.feEvents, port: f.fePort).map(\.status)
    }

    private func req(gref: UInt32, offset: UInt16 = 0, flags: NetTxFlags = [], id: UInt16, size: UInt16) -> netif_tx_request {
        netif_tx_request(gref: gref, offset: offset, flags: flags.rawValue, id: id, size: size)
    }

    @Test func badPacketsAreRefusedAndTheVifKeepsServing() async throws {
        let f = try NetFixture()
        let ref = f.txPool.refs[1].rawValue
        let endless = [req(gref: ref, flags: .moreData, id: 20, size: 60000)]
            + (0 ..< 30).map { req(gref: ref, flags: .moreData, id: UInt16(21 + $0), size: 10) }
        let slots: [netif_tx_request] = [
            req(gref: 0xdead, id: 1, size: 100),                       // grant ref out of the table
            req(gref: ref, id: 2, size: 0),                            // size 0
            req(gref: ref, offset: 4000, id: 3, size: 200),            // offset + size past the page
        ] + endless
        let statuses = try await run(f, slots)
        #expect(statuses.count == slots.count + 1)
        #expect(statuses.last == NetifStatus.okay.rawValue)           // the good packet after all of it
        #expect(statuses.prefix(3).allSatisfy { $0 == NetifStatus.error.rawValue })
        #expect(f.vif.counters.badGrants.value >= 1)
        #expect(f.vif.counters.refused(.packetTooSmall) >= 1)
        #expect(f.vif.counters.refused(.crossesPageBoundary) >= 1)
        #expect(f.vif.counters.refused(.tooManySlots) >= 1)
        #expect(f.vif.failure == nil)
        #expect(f.sentFrames().count == 1 && f.sentFrames()[0].bytes.count == 60)
        _ = try f.teardown()
    }

    @Test func aFloodIsServedWithoutGrowth() async throws {
        let f = try NetFixture()
        let ref = f.txPool.refs[2].rawValue
        let flood = (0 ..< 5000).map { req(gref: ref, id: UInt16($0 % 200), size: 60) }
        let statuses = try await run(f, flood)
        #expect(statuses.count == flood.count + 1)
        #expect(statuses.allSatisfy { $0 == NetifStatus.okay.rawValue })
        #expect(f.vif.counters.txPackets.value == UInt64(flood.count + 1))
        _ = try f.teardown()
    }

    @Test func producerIndexFarAheadStopsOnlyThatVif() async throws {
        let bad = try NetFixture()
        let good = try NetFixture()
        var tx = try FrontRing<netif_tx_request, netif_tx_response>(initializing: bad.txRing.memory)
        _ = tx.pushRequests()
        try bad.startBackend()
        // req_prod a million entries past anything produced.
        tx.header.requestProducer.store(1_000_000, ordering: .releasing)
        try bad.feEvents.notify(bad.fePort)
        #expect(await eventually { bad.vif.failure != nil })
        #expect((bad.vif.failure as? RingError)?.code == .requestProducerOverflow)

        // The other device carries on.
        let fe = try good.makeFrontend()
        try good.startBackend()
        #expect(try patternFrame(100, seed: 3).withUnsafeBytes { try fe.send($0) })
        #expect(await eventually { good.sentFrames().count == 1 })
        _ = try bad.teardown()
        _ = try good.teardown()
    }
}

/// Stopping a vif whose frontend keeps its tx ring full: stop is honoured on every turn,
/// not only when the thread sleeps, so it returns; and the rings are unmapped only after
/// the thread is gone.
@Suite(.timeLimit(.minutes(5)))
struct NetFloodedStopTests {
    @Test func stopReturnsUnderAFloodAndTheRingsAreUnmappedAfterTheThreadExited() async throws {
        let f = try NetFixture()
        let flood = try txRingFlooder(f)
        try f.startBackend()
        flood.start()
        let vif: VifQueue = f.vif
        // Several rings' worth answered: the flood is on and the vif is serving it.
        await flood.answered(8 * Int(vif.transmitRingSize))
        let rings = [f.txMap.handle, f.rxMap.handle]
        let atUnmap = Locked<[DriverRuntime.State]>([])
        f.mapper.onUnmap { m in if rings.contains(m.handle) { atUnmap.withLock { $0.append(vif.threadState) } } }
        await vif.stopped()
        #expect(atUnmap.withLock { $0 } == [.joined, .joined])
        #expect(vif.failure == nil)
        // The statistics publisher may still ask: the answers no longer read the unmapped rings.
        #expect(vif.transmitRingFill == 0 && vif.receiveBuffersPosted == 0)
        #expect(await flood.stop(), "the flooding thread did not end")
        f.mapper.onUnmap(nil)
        #expect(try f.teardown().isEmpty)
    }
}
