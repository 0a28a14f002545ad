import Atomics
import Foundation
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// Races between threads: lost wakeups on the eventfd, and grant/map/unmap/
/// notify from several threads at once. Run under TSan with
/// `swift test --sanitize=thread --filter XenSimulatorTests`.
@Suite(.timeLimit(.minutes(5)))
struct ConcurrencyTests {
    /// Waits on `channels` (bounded), then takes every pending port and
    /// unmasks it. False when nothing arrived in time.
    static func drain(_ channels: SimulatedEventChannels, timeoutMilliseconds: Int32 = 10_000) -> Bool {
        guard (try? channels.wait(timeoutMilliseconds: timeoutMilliseconds)) == true else { return false }
        while let p = try? channels.pending() { try? channels.unmask(p) }
        return true
    }

    @Test func pingPongLosesNoWakeup() async throws {
        let m = try Machine()
        let c = try Channel(m)
        let rounds = 3000
        let sent = ManagedAtomic<Int>(0)
        let acked = ManagedAtomic<Int>(0)
        let failed = ManagedAtomic<Bool>(false)
        let done = await runThreads(2) { who in
            if who == 0 {
                for i in 1...rounds {
                    sent.store(i, ordering: .releasing)
                    try? c.front.notify(c.frontPort)
                    while acked.load(ordering: .acquiring) < i {
                        if failed.load(ordering: .relaxed) { return }
                        guard Self.drain(c.front) else { failed.store(true, ordering: .relaxed); return }
                    }
                }
            } else {
                var last = 0
                while last < rounds {
                    if failed.load(ordering: .relaxed) { return }
                    guard Self.drain(c.back) else { failed.store(true, ordering: .relaxed); return }
                    let now = sent.load(ordering: .acquiring)
                    if now > last {
                        last = now
                        acked.store(now, ordering: .releasing)
                        try? c.back.notify(c.backPort)
                    }
                }
            }
        }
        let didFail = failed.load(ordering: .relaxed)
        let finalAck = acked.load(ordering: .relaxed)
        #expect(done)
        #expect(!didFail)
        #expect(finalAck == rounds)
    }

    @Test func burstsRacingUnmaskEndWithTheLastEventSeen() async throws {
        let m = try Machine()
        let c = try Channel(m)
        let total = 20_000
        let sent = ManagedAtomic<Int>(0)
        let seen = ManagedAtomic<Int>(0)
        let done = await runThreads(2) { who in
            if who == 0 {
                for i in 1...total {
                    sent.store(i, ordering: .releasing)
                    try? c.front.notify(c.frontPort)
                    if i % 97 == 0 { sched_yield() }
                }
            } else {
                // Unmask first, then read: the order a driver that re-checks its
                // ring after re-arming uses. Every value is eventually seen.
                while seen.load(ordering: .relaxed) < total {
                    guard (try? c.back.wait(timeoutMilliseconds: 10_000)) == true else { return }
                    while let p = try? c.back.pending() {
                        try? c.back.unmask(p)
                        seen.store(sent.load(ordering: .acquiring), ordering: .relaxed)
                    }
                }
            }
        }
        let lastSeen = seen.load(ordering: .relaxed)
        #expect(done)
        #expect(lastSeen == total)
        // The receiver can read `sent == total` before the sender's last notify
        // lands, so that one event may still be pending; a second may not.
        if let late = try c.back.pending() { try c.back.unmask(late) }
        // Quiet now: nothing pending, descriptor not readable.
        #expect(try c.back.pending() == nil)
        #expect(!isReadable(c.back))
    }

    /// Several senders ping-pong on ports of one bitmap word while one thread
    /// consumes. A sender whose notify has returned is owed a readable
    /// descriptor, so two polls in a row that time out while a sender waits in
    /// that state (one could be a sender that was off the CPU) are a lost
    /// wakeup, caught as such rather than as a hang.
    @Test func portsSharingAWordLoseNoWakeup() async throws {
        let m = try Machine()
        let back = try m.dom0.openSimulatedEventChannels()
        let front = try m.guest.openSimulatedEventChannels()
        let senders = 3
        var ports: [(EventPort, EventPort)] = []
        for _ in 0..<senders {
            let f = try front.bindUnbound(remote: .dom0)
            ports.append((f, try back.bindInterdomain(remote: m.guest.domainID, remotePort: f)))
        }
        #expect(Set(ports.map { $0.1.rawValue / 64 }).count == 1)
        while let p = try back.pending() { try back.unmask(p) }
        #if DEBUG
        // Hold settle's check-then-clear window open so senders land in it.
        back.settleWindow = { usleep(20) }
        #endif
        let rounds = 2000
        // Per sender: [0] round published, [1] round whose notify returned,
        // [2] round acknowledged.
        let state = UnsafeMutablePointer<ManagedAtomic<Int>>.allocate(capacity: senders * 3)
        for i in 0..<(senders * 3) { (state + i).initialize(to: ManagedAtomic(0)) }
        defer { state.deinitialize(count: senders * 3); state.deallocate() }
        let table = SendableTable(state)
        let lost = ManagedAtomic<Int>(0)
        let finished = ManagedAtomic<Int>(0)
        let ports_ = ports
        let done = await runThreads(senders + 1) { who in
            if who < senders {
                defer { finished.wrappingIncrement(ordering: .relaxed) }
                for i in 1...rounds {
                    table[who * 3].store(i, ordering: .releasing)
                    try? front.notify(ports_[who].0)
                    table[who * 3 + 1].store(i, ordering: .releasing)
                    var spins = 0
                    while table[who * 3 + 2].load(ordering: .acquiring) < i {
                        spins += 1
                        if spins > 20 { sched_yield() }
                        if lost.load(ordering: .relaxed) > 0 { return }
                    }
                }
            } else {
                // Senders whose notify returned unacknowledged at the last timeout, with
                // their round. One timeout proves nothing (a sender off the CPU may notify
                // just after it); the same round unacknowledged across two waits that both
                // timed out is a wakeup lost for good (its notify returned before the
                // first, so the second would have woken).
                var suspects: [Int: Int] = [:]
                while finished.load(ordering: .relaxed) < senders {
                    if (try? back.wait(timeoutMilliseconds: 300)) != true {
                        var unacknowledged: [Int: Int] = [:]
                        for s in 0..<senders {
                            let returned = table[s * 3 + 1].load(ordering: .acquiring)
                            if returned > table[s * 3 + 2].load(ordering: .relaxed) { unacknowledged[s] = returned }
                        }
                        for (s, round) in unacknowledged where suspects[s] == round {
                            lost.wrappingIncrement(ordering: .relaxed)
                        }
                        if lost.load(ordering: .relaxed) > 0 { return }
                        suspects = unacknowledged
                        continue
                    }
                    suspects = [:]
                    while let p = try? back.pending() {
                        let s = ports_.firstIndex { $0.1 == p }!
                        table[s * 3 + 2].store(table[s * 3].load(ordering: .acquiring), ordering: .releasing)
                        try? back.unmask(p)
                    }
                }
            }
        }
        let lostCount = lost.load(ordering: .relaxed)
        #expect(done)
        #expect(lostCount == 0)
    }

    @Test func manySendersOnePollerAcrossPorts() async throws {
        let m = try Machine()
        let back = try m.dom0.openSimulatedEventChannels()
        let senders = 4
        var fronts: [(SimulatedEventChannels, EventPort, EventPort)] = []
        for _ in 0..<senders {
            let f = try m.guest.openSimulatedEventChannels()
            let fp = try f.bindUnbound(remote: .dom0)
            fronts.append((f, fp, try back.bindInterdomain(remote: m.guest.domainID, remotePort: fp)))
        }
        while let p = try back.pending() { try back.unmask(p) }
        let perSender = 2000
        let progress = UnsafeMutablePointer<ManagedAtomic<Int>>.allocate(capacity: senders)
        for i in 0..<senders { (progress + i).initialize(to: ManagedAtomic(0)) }
        defer { progress.deinitialize(count: senders); progress.deallocate() }
        let progressBox = SendableTable(progress)
        let fronts_ = fronts
        let done = await runThreads(senders + 1) { who in
            if who < senders {
                let (f, fp, _) = fronts_[who]
                for i in 1...perSender {
                    progressBox[who].store(i, ordering: .releasing)
                    try? f.notify(fp)
                }
            } else {
                var finished = Set<Int>()
                while finished.count < senders {
                    guard (try? back.wait(timeoutMilliseconds: 10_000)) == true else { return }
                    while let p = try? back.pending() {
                        try? back.unmask(p)
                        let who = fronts_.firstIndex { $0.2 == p }!
                        if progressBox[who].load(ordering: .acquiring) == perSender { finished.insert(who) }
                    }
                }
            }
        }
        #expect(done)
        for f in fronts { f.0.close() }
        back.close()
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func grantMapUnmapNotifyFromManyThreads() async throws {
        let hv = SimulatedHypervisor(dom0Frames: 64)
        let workers = 4
        var guests: [SimulatedDomain] = []
        for _ in 0..<workers { guests.append(try hv.createDomain(frames: 16)) }
        let guests_ = guests
        // One dom0 mapper and one dom0 event handle shared by every thread.
        let mapper = try hv.dom0.openGrantMapper()
        let back = try hv.dom0.openSimulatedEventChannels()
        var links: [(SimulatedEventChannels, EventPort)] = []
        for g in guests {
            let f = try g.openSimulatedEventChannels()
            let fp = try f.bindUnbound(remote: .dom0)
            _ = try back.bindInterdomain(remote: g.domainID, remotePort: fp)
            links.append((f, fp))
        }
        let links_ = links
        let rounds = 300
        let errors = ManagedAtomic<Int>(0)
        let stop = ManagedAtomic<Bool>(false)
        let finished = ManagedAtomic<Int>(0)
        let done = await runThreads(workers + 2) { who in
            if who < workers {
                let g = guests_[who]
                let (f, fp) = links_[who]
                let local = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
                defer { local.deallocate(); finished.wrappingIncrement(ordering: .relaxed) }
                for i in 0..<rounds {
                    do throws(HypervisorError) {
                        let frame = FrameNumber(UInt64(i % 16))
                        let ref = try g.grantAccess(frame: frame, to: .dom0, readOnly: false)
                        let mapping = try mapper.map(ref, from: g.domainID, writable: true)
                        mapping.memory.base.storeBytes(of: UInt64(i), toByteOffset: 8, as: UInt64.self)
                        if g.memory(of: frame).load(fromByteOffset: 8, as: UInt64.self) != UInt64(i) {
                            errors.wrappingIncrement(ordering: .relaxed)
                        }
                        // A copy while mapped: pins nest.
                        var seg = [GrantCopySegment(source: .foreign(domain: g.domainID, ref: ref, offset: 8), destination: .local(local), length: 8)]
                        try seg.withUnsafeMutableBufferPointer { (b) throws(HypervisorError) in try mapper.copy(b) }
                        if seg[0].status != .okay || local.load(as: UInt64.self) != UInt64(i) {
                            errors.wrappingIncrement(ordering: .relaxed)
                        }
                        try mapper.unmap(mapping)
                        try g.endAccess(ref)
                        try f.notify(fp)
                    } catch {
                        errors.wrappingIncrement(ordering: .relaxed)
                    }
                }
            } else if who == workers {
                // dom0's event loop.
                while !stop.load(ordering: .relaxed) {
                    if (try? back.wait(timeoutMilliseconds: 50)) == true {
                        while let p = try? back.pending() { try? back.unmask(p) }
                    }
                    if finished.load(ordering: .relaxed) == workers { stop.store(true, ordering: .relaxed) }
                }
            } else {
                // Control operations racing the data path: bind and close ports.
                let extra = try? guests_[0].openSimulatedEventChannels()
                while !stop.load(ordering: .relaxed) {
                    guard let extra, let p = try? extra.bindUnbound(remote: .dom0),
                        let q = try? back.bindInterdomain(remote: guests_[0].domainID, remotePort: p)
                    else { errors.wrappingIncrement(ordering: .relaxed); return }
                    try? extra.notify(p)
                    try? back.unbind(q)
                    if (try? extra.notify(p)) != nil { errors.wrappingIncrement(ordering: .relaxed) }
                    try? extra.unbind(p)
                }
                extra?.close()
            }
        }
        let errorCount = errors.load(ordering: .relaxed)
        #expect(done)
        #expect(errorCount == 0)
        for (f, _) in links { f.close() }
        back.close()
        mapper.close()
        let left = hv.shutdown()
        #expect(left.isEmpty, "\(left)")
    }
}

/// A table of atomics shared by test threads; the test owns the memory.
struct SendableTable: @unchecked Sendable {
    let base: UnsafeMutablePointer<ManagedAtomic<Int>>
    init(_ base: UnsafeMutablePointer<ManagedAtomic<Int>>) { self.base = base }
    subscript(i: Int) -> ManagedAtomic<Int> { base[i] }
}
