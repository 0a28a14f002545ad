import Testing
@testable import XenDriverRuntime

/// The policy fed synthetic waits (nanoseconds): what it spins for next, never a clock.
@Suite(.timeLimit(.minutes(5)))
struct SpinPolicyTests {
    static let block = SpinPolicy.Settings(limit: .microseconds(1000), wakeUpWorth: .microseconds(200))
    static let µs: UInt64 = 1000

    /// `count` waits of `wait` ns with `inFlight` due, then the next budget.
    static func after(_ waits: [(wait: UInt64, count: Int)], inFlight: Int, _ policy: inout SpinPolicy) -> UInt64 {
        for (wait, count) in waits {
            for _ in 0..<count { policy.record(wait: wait, inFlight: inFlight) }
        }
        return policy.budget(inFlight: inFlight)
    }

    @Test func withNothingMeasuredItProbesUpToTheWorth() {
        var p = SpinPolicy(Self.block)
        #expect(p.budget(inFlight: 1) == 200 * Self.µs)
        #expect(p.budget(inFlight: 4) == 50 * Self.µs)
        var tight = SpinPolicy(.init(limit: .microseconds(30), wakeUpWorth: .microseconds(200)))
        #expect(tight.budget(inFlight: 1) == 30 * Self.µs)
    }

    @Test func aZeroLimitNeverSpins() {
        var p = SpinPolicy(.init(limit: .zero, wakeUpWorth: .microseconds(200)))
        #expect(Self.after([(2 * Self.µs, 100)], inFlight: 1, &p) == 0)
        for _ in 0..<100 { #expect(p.budget(inFlight: 1) == 0) }
    }

    /// Queue depth 1 on a disk: the answer comes after ~80 µs; spinning that long pays, and
    /// the spin covers it.
    @Test func aDisksAnswerAtDepthOneIsSpunFor() {
        var p = SpinPolicy(Self.block)
        let b = Self.after([(80 * Self.µs, 64)], inFlight: 1, &p)
        #expect(b >= 80 * Self.µs && b <= 1000 * Self.µs)
    }

    /// The same device at depth 32: completions 20 µs apart are not worth spinning for
    /// (a sleep gathers several), until they come a few µs apart (CPU-bound, as tmpfs).
    @Test func atDepth32OnlyAnswersAFewMicrosecondsAwayAreSpunFor() {
        var disk = SpinPolicy(Self.block)
        #expect(Self.after([(20 * Self.µs, 64)], inFlight: 32, &disk) == 0)
        var memory = SpinPolicy(Self.block)
        let b = Self.after([(1500, 64)], inFlight: 32, &memory)
        #expect(b >= 1500 && b <= 4 * Self.µs)
    }

    /// blkfront's settings: the answers due share more worth, each at most a lone request's.
    /// At depth 32, answers 20 µs apart are spun for (100 µs each, against 6 µs shared from
    /// the lone worth); at depth 1, an answer 300 µs away is not, nor a caller's next request
    /// 400 µs away (a spin for them would take most of the vCPU of a guest doing a few
    /// thousand requests a second), as a per-request worth of 3.2 ms would have it.
    @Test func answersDueShareAWorthOfTheirOwnEachAtMostALoneRequests() {
        let front = SpinPolicy.Settings(limit: .microseconds(1000), wakeUpWorth: .microseconds(200),
                                        sharedWorth: .microseconds(3200))
        var deep = SpinPolicy(front)
        let b = Self.after([(20 * Self.µs, 64)], inFlight: 32, &deep)
        #expect(b >= 20 * Self.µs && b <= 100 * Self.µs)
        var lone = SpinPolicy(front)
        #expect(Self.after([(300 * Self.µs, 64)], inFlight: 1, &lone) == 0)
        var idle = SpinPolicy(front)
        #expect(Self.after([(400 * Self.µs, 64)], inFlight: 0, &idle) == 0)
        var dear = SpinPolicy(.init(limit: .microseconds(1000), wakeUpWorth: .microseconds(3200)))
        #expect(Self.after([(300 * Self.µs, 64)], inFlight: 1, &dear) >= 300 * Self.µs)
        var blkback = SpinPolicy(Self.block)
        #expect(Self.after([(20 * Self.µs, 64)], inFlight: 32, &blkback) == 0)
    }

    /// Spins that keep ending in a sleep (the waits grew from 3 µs to 5 ms): the spin gets
    /// shorter, then stops.
    @Test func missesShortenTheSpinThenStopIt() {
        var p = SpinPolicy(Self.block)
        var last = Self.after([(3 * Self.µs, 64)], inFlight: 1, &p)
        #expect(last > 0)
        var budgets: [UInt64] = []
        for _ in 0..<1000 {
            p.record(wait: 5_000 * Self.µs, inFlight: 1)
            let b = p.budget(inFlight: 1)
            if b > 0 || budgets.last != 0 { budgets.append(b) }
            if b == 0 { break }
        }
        #expect(budgets.last == 0)
        for b in budgets {
            #expect(b <= last)
            last = b
        }
    }

    /// Half the waits short, half long: a short spin catches the short half cheaply.
    @Test func aBimodalWaitGetsASpinForItsShortMode() {
        var p = SpinPolicy(Self.block)
        for _ in 0..<64 {
            p.record(wait: 2 * Self.µs, inFlight: 1)
            p.record(wait: 10_000 * Self.µs, inFlight: 1)
        }
        let b = p.budget(inFlight: 1)
        #expect(b >= 2 * Self.µs && b <= 8 * Self.µs)
    }

    /// An idle device: nothing in flight and the next request seconds away: no spin, but
    /// for a probe of at most the worth every `probeEvery` waits; a peer whose next request
    /// follows within microseconds (queue depth 1) gets one.
    @Test func nothingInFlightSpinsOnlyForAPeerThatFollowsQuickly() {
        var idle = SpinPolicy(Self.block)
        for _ in 0..<64 { idle.record(wait: 2_000_000_000, inFlight: 0) }
        var spins: [UInt64] = []
        for _ in 0..<(4 * SpinPolicy.probeEvery) {
            let b = idle.budget(inFlight: 0)
            if b > 0 { spins.append(b) }
            idle.record(wait: 2_000_000_000, inFlight: 0)
        }
        #expect(spins == Array(repeating: 200 * Self.µs, count: 4))
        var busy = SpinPolicy(Self.block)
        let b = Self.after([(4 * Self.µs, 64)], inFlight: 0, &busy)
        #expect(b >= 4 * Self.µs && b <= 16 * Self.µs)
    }

    /// Waits with answers due and waits without are measured apart.
    @Test func dueAndIdleWaitsAreKeptApart() {
        var p = SpinPolicy(Self.block)
        for _ in 0..<64 {
            p.record(wait: 2_000_000_000, inFlight: 0)
            p.record(wait: 50 * Self.µs, inFlight: 1)
        }
        #expect(p.budget(inFlight: 1) >= 50 * Self.µs)
        #expect(p.budget(inFlight: 0) == 0)
    }

    /// Old waits fade: after a change of regime the new waits decide within ~100 waits.
    @Test func oldWaitsFade() {
        var p = SpinPolicy(Self.block)
        #expect(Self.after([(5_000 * Self.µs, 1000)], inFlight: 1, &p) == 0)
        #expect(Self.after([(10 * Self.µs, 100)], inFlight: 1, &p) >= 10 * Self.µs)
    }

    @Test func bucketsArePowersOfTwoFrom256Nanoseconds() {
        #expect(WaitHistogram.bucket(0) == 0)
        #expect(WaitHistogram.bucket(255) == 0)
        #expect(WaitHistogram.bucket(256) == 1)
        #expect(WaitHistogram.bucket(511) == 1)
        #expect(WaitHistogram.bucket(512) == 2)
        #expect(WaitHistogram.bucket(UInt64.max) == WaitHistogram.buckets - 1)
        for k in 0..<(WaitHistogram.buckets - 1) {
            #expect(WaitHistogram.bucket(WaitHistogram.upperBound(k) - 1) == k)
            #expect(WaitHistogram.bucket(WaitHistogram.upperBound(k)) == k + 1)
        }
    }
}

extension SpinPolicyTests {
    /// A spin cut short by preemption benches spinning for `backoffMin` waits, twice as
    /// many after a second one; undisturbed spins shrink the bench again, slowly.
    @Test func preemptionBenchesSpinningForLongerEachTime() {
        var p = SpinPolicy(Self.block)
        let b = Self.after([(80 * Self.µs, 64)], inFlight: 1, &p)
        #expect(b > 0)
        func benched(_ p: inout SpinPolicy) -> Int {
            var n = 0
            while p.budget(inFlight: 1) == 0 { n += 1 }
            return n
        }
        p.spun(preempted: true)
        #expect(benched(&p) == SpinPolicy.backoffMin)
        p.spun(preempted: true)
        #expect(benched(&p) == 2 * SpinPolicy.backoffMin)
        for _ in 0..<20 { p.spun(preempted: true) }
        #expect(benched(&p) == SpinPolicy.backoffMax)
        p.spun(preempted: false)
        p.spun(preempted: true)
        #expect(benched(&p) == SpinPolicy.backoffMax)
        for _ in 0..<500 { p.spun(preempted: false) }
        p.spun(preempted: true)
        #expect(benched(&p) == SpinPolicy.backoffMin)
    }
}
