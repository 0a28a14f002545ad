import Testing
import XenDriverRuntime
import XenHypervisor
import XenLocks
import XenSimulator

/// A service whose every turn finds work: a peer that never lets the ring go idle.
final class Flooded: DriverService, @unchecked Sendable {
    let turns = DriverCounter(0)
    let finished = Locked<[String]>([])
    let failAfter: UInt64?
    init(failAfter: UInt64? = nil) { self.failAfter = failAfter }
    struct Broken: Error {}
    func serviceTurn() throws -> Bool {
        turns.bump()
        if let failAfter, turns.value >= failAfter { throw Broken() }
        return true
    }
    func prepareToSleep(_ poll: PollSet) throws -> Bool { true }
    func finish(failure: (any Error)?) { finished.withLock { $0.append(failure == nil ? "stop" : "failure") } }
}

/// A service that never has work: the thread sleeps until stopped.
final class Idle: DriverService, @unchecked Sendable {
    func serviceTurn() throws -> Bool { false }
    func prepareToSleep(_ poll: PollSet) throws -> Bool { false }
}

@Suite(.timeLimit(.minutes(5)))
struct DriverRuntimeTests {
    let hv = SimulatedHypervisor()

    /// The thread never sleeps, so only the per-turn flag can stop it; stop returns with
    /// the thread joined and the service finished on it.
    @Test func stopEndsAThreadThatNeverRunsOutOfWork() throws {
        let events = try hv.dom0.openEventChannels()
        defer { events.close() }
        let service = Flooded()
        let runtime = DriverRuntime()
        runtime.start(name: "flooded", service: service, events: events)
        while service.turns.value < 1000 {}
        _ = runtime.stop()
        #expect(runtime.state == .joined)
        #expect(service.finished.withLock { $0 } == ["stop"])
        #expect(runtime.sleeps.value == 0)
        #expect(runtime.failure == nil)
    }

    @Test func aSleepingThreadIsWokenByStop() async throws {
        let events = try hv.dom0.openEventChannels()
        defer { events.close() }
        let runtime = DriverRuntime()
        runtime.start(name: "idle", service: Idle(), events: events)
        _ = await runtime.stopped()
        #expect(runtime.state == .joined)
    }

    @Test func aFailureEndsTheLoopFinishesTheServiceAndIsReported() async throws {
        let events = try hv.dom0.openEventChannels()
        defer { events.close() }
        let service = Flooded(failAfter: 3)
        let runtime = DriverRuntime()
        let reported = AsyncStream<String>.makeStream()
        runtime.start(name: "failing", service: service, events: events) { error in
            reported.continuation.yield("\(type(of: error))")
            reported.continuation.finish()
        }
        var iterator = reported.stream.makeAsyncIterator()
        #expect(await iterator.next() == "Broken")
        _ = await runtime.stopped()
        #expect(runtime.failure is Flooded.Broken)
        #expect(service.finished.withLock { $0 } == ["failure"])
        #expect(service.turns.value == 3)
    }

    @Test func stoppingANeverStartedRuntimeReturnsAtOnce() {
        let runtime = DriverRuntime()
        _ = runtime.stop()
        #expect(runtime.state == .idle)
    }
}
