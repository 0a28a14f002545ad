import Testing
@testable import XenDriverRuntime

@Suite(.timeLimit(.minutes(5)))
struct SpinTests {
    /// On a played clock (1 µs per look): a real thread may be preempted between two
    /// looks, which ends a spin early by design.
    @Test func pollingStopsAtTheFirstYes() {
        var clock: UInt64 = 0
        var looks = 0
        let outcome = Spin.poll(nanoseconds: 10_000_000, yieldsThatMayRunOthers: 0,
                                now: { clock += 1000; return clock }, yield: {}) {
            looks += 1
            return looks == 3
        }
        #expect(outcome == .arrived && looks == 3)
    }

    /// It ends by itself: at its budget, or earlier if the thread was preempted (which
    /// on a busy machine it may be, so only the end is asserted, not when).
    @Test func pollingGivesUpWithoutAYes() {
        var looks = 0
        let found = Spin.poll(for: .milliseconds(2)) {
            looks += 1
            return false
        }
        #expect(!found && looks >= 1)
    }

    @Test func aZeroBudgetDoesNotLook() {
        var looks = 0
        #expect(!Spin.poll(for: .zero) { looks += 1; return true })
        #expect(looks == 0)
    }

    /// A played scheduler: the clock moves 1 µs per look, and each yield (every 20 µs of
    /// spinning) takes `yieldTakes` µs: 15 when another thread ran, 1 when none was waiting.
    private func spin(budgetMicroseconds: UInt64, tolerating: Int, yieldTakes: (Int) -> UInt64) -> (Spin.Outcome, yields: Int) {
        var clock: UInt64 = 1_000_000
        var yields = 0
        let outcome = Spin.poll(nanoseconds: budgetMicroseconds * 1000, yieldsThatMayRunOthers: tolerating,
                                now: { clock += 1000; return clock },
                                yield: { yields += 1; clock += yieldTakes(yields) * 1000 },
                                { false })
        return (outcome, yields)
    }

    /// After a turn that woke its peer, the first yield that runs another thread ends the
    /// spin (that thread is likely the peer, placed on this CPU); otherwise one such yield
    /// is let through, the next ends it; yields that run nobody never do.
    @Test func yieldsThatRunOtherThreadsEndTheSpinPastTheirAllowance() {
        let strict = spin(budgetMicroseconds: 1000, tolerating: 0) { _ in 15 }
        #expect(strict.0 == .preempted && strict.yields == 1)
        let lenient = spin(budgetMicroseconds: 1000, tolerating: 1) { _ in 15 }
        #expect(lenient.0 == .preempted && lenient.yields == 2)
        // Only the first yield ran another thread: the spin goes on to its budget.
        let once = spin(budgetMicroseconds: 1000, tolerating: 1) { n in n == 1 ? 15 : 1 }
        #expect(once.0 == .expired && once.yields > 2)
        let quiet = spin(budgetMicroseconds: 1000, tolerating: 0) { _ in 1 }
        #expect(quiet.0 == .expired)
        // Off the CPU for 200 µs between two looks is preemption whatever the allowance.
        var clock: UInt64 = 0
        var looks = 0
        let gap = Spin.poll(nanoseconds: 1_000_000, yieldsThatMayRunOthers: 100,
                            now: { looks += 1; clock += looks == 5 ? 250_000 : 1000; return clock },
                            yield: {}, { false })
        #expect(gap == .preempted)
    }

    /// A lone request's spin outlasts yields that run other threads (a disk write's kworker,
    /// the client); at depth, a spin after a turn that woke the peer ends at the first one.
    @Test func aLoneRequestsSpinIsNotEndedByOtherThreadsTurns() {
        let lone = Spin.yieldsThatMayRunOthers(inFlight: 1, wokePeer: true)
        let spun = spin(budgetMicroseconds: 1000, tolerating: lone) { _ in 15 }
        #expect(spun.0 == .expired && spun.yields > 2)
        #expect(Spin.yieldsThatMayRunOthers(inFlight: 1, wokePeer: false) == lone)
        let deep = spin(budgetMicroseconds: 1000, tolerating: Spin.yieldsThatMayRunOthers(inFlight: 32, wokePeer: true)) { _ in 15 }
        #expect(deep.0 == .preempted && deep.yields == 1)
        #expect(Spin.yieldsThatMayRunOthers(inFlight: 32, wokePeer: false) == 1)
        #expect(Spin.yieldsThatMayRunOthers(inFlight: 0, wokePeer: true) == 0)
        #expect(Spin.yieldsThatMayRunOthers(inFlight: 0, wokePeer: false) == 1)
    }

    @Test func errorsComeThroughTyped() {
        struct Broken: Error {}
        #expect(throws: Broken.self) { try Spin.poll(for: .seconds(1)) { () throws(Broken) -> Bool in throw Broken() } }
    }
}
