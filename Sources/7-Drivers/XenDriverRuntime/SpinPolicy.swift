/// How long a driver thread spins before it sleeps, chosen from how long its recent waits
/// took: a spin pays only when the work it waits for is likely to arrive within it.
///
/// A spin that catches the peer's answer spares the waiting request a wake-up (tens of
/// microseconds on an idle vCPU: the README's block section has the measurement); a spin
/// that ends in a sleep anyway only burned its CPU. So each loop measures every wait, from
/// going idle until work arrived (caught by a spin, or by a sleep, then with the wake-up
/// in it), in a small histogram of powers of two that forgets old waits, and picks the
/// spin with the best expected gain:
///
///     gain(B) = P(wait ≤ B) · worth / max(1, inFlight) − E[min(wait, B)]
///
/// over the bucket bounds `B` up to ``Settings/limit``, or no spin if no gain is positive.
/// `worth` (``Settings/wakeUpWorth``) is how much spinning one spared wake-up is worth to
/// a request that waits for this thread alone. It is shared by what is in flight (as
/// ``Settings/sharedWorth``, at most `worth` each, when a thread's answers due weigh more
/// together): with
/// one answer due (queue depth 1) a late wake-up delays the only request and the CPU is
/// otherwise idle, so spinning for a disk's 60–120 µs pays; with 32 due the device works
/// on the others meanwhile, a sleep gathers several completions per wake-up, and the CPU
/// a spin burns is what the rest of the path (and the other side's thread, on two cores)
/// needs — measured on a disk at qd32: 55k IOPS and 10 µs of CPU per I/O without polling
/// against 43k and 20 µs with a fixed 1 ms.
///
/// What follows from the formula: waits that keep ending past the spin make every
/// `P(wait ≤ B)` smaller, so the spin gets shorter and then stops; a thread with nothing
/// in flight spins only while its peer's next request has been following within a few
/// microseconds (queue depth 1: the caller's next request follows the response), never
/// on an idle device, whose waits are long. A slept wait counts the wake-up too, so a
/// thread that does not spin re-measures with a spin of at most `worth / inFlight` every
/// ``probeEvery``-th wait.
///
/// A spin is worth nothing when the CPU is oversubscribed: the peer it waits for may be
/// the thread it keeps off the CPU, and a spinning thread loses the scheduler's favour a
/// sleeper has (on two busy vCPUs a polling path ran at a tenth of fio's IOPS). So a spin
/// cut short by preemption (``Spin/Outcome/preempted``) stops all spinning for the next
/// ``backoffMin`` waits, doubling on each further one up to ``backoffMax``; each
/// undisturbed spin takes a sixteenth off again (slowly: at a high request rate most
/// spins end within microseconds, undisturbed even on a contended CPU).
///
/// Pure: it reads no clock. The loop feeds it each wait's length (``record(wait:inFlight:)``)
/// and asks it for the next spin (``budget(inFlight:)``); tests feed it synthetic waits.
public struct SpinPolicy: Sendable {
    /// The bounds of a thread's spinning.
    public struct Settings: Sendable, Equatable {
        /// The longest spin; zero never spins.
        public var limit: Duration
        /// What sparing one waiting request a wake-up is worth, in spin time (see ``SpinPolicy``).
        public var wakeUpWorth: Duration
        /// What sparing a wake-up is worth to all the answers due together, shared among
        /// them, each getting at most ``wakeUpWorth``.
        public var sharedWorth: Duration
        /// Spins of at most `limit`, worth `wakeUpWorth` per spared wake-up to one waiting
        /// request and `sharedWorth` (if given, else `wakeUpWorth`) to all answers due.
        public init(limit: Duration, wakeUpWorth: Duration, sharedWorth: Duration? = nil) {
            self.limit = limit
            self.wakeUpWorth = wakeUpWorth
            self.sharedWorth = sharedWorth ?? wakeUpWorth
        }
    }

    /// A thread that does not spin spins once (to measure waits without a wake-up in them)
    /// every this many waits.
    public static let probeEvery = 16

    /// Waits without spinning after a preempted spin, at first and at most.
    public static let backoffMin = 16
    /// See ``backoffMin``.
    public static let backoffMax = 4096

    private let limit: UInt64
    private let worth: UInt64
    private let sharedWorth: UInt64
    /// Waits with answers due, and waits with none (the peer's next request).
    private var due = WaitHistogram()
    private var idle = WaitHistogram()
    private var unspun = 0
    /// Waits left without spinning, and how many the next preemption costs.
    private var benched = 0
    private var backoff = 0

    /// A policy with no waits measured yet (its first waits are probes).
    public init(_ settings: Settings) {
        limit = Spin.nanoseconds(settings.limit)
        worth = Spin.nanoseconds(settings.wakeUpWorth)
        sharedWorth = Spin.nanoseconds(settings.sharedWorth)
    }

    /// Nanoseconds to spin before sleeping, with `inFlight` answers due (0: none); zero
    /// sleeps at once.
    public mutating func budget(inFlight: Int) -> UInt64 {
        guard limit > 0 else { return 0 }
        if benched > 0 {
            benched -= 1
            return 0
        }
        let share = inFlight > 0 ? min(worth, sharedWorth / UInt64(inFlight)) : worth
        let chosen = (inFlight > 0 ? due : idle).bestSpin(worth: share, limit: limit)
        if chosen > 0 {
            unspun = 0
            return chosen
        }
        unspun += 1
        guard unspun >= Self.probeEvery else { return 0 }
        unspun = 0
        return min(limit, share)
    }

    /// Records how a spin ended: cut short by preemption (the CPU is oversubscribed: stop
    /// spinning for a while) or not (the while shrinks by a sixteenth).
    public mutating func spun(preempted: Bool) {
        if preempted {
            backoff = min(Self.backoffMax, max(Self.backoffMin, backoff * 2))
            benched = backoff
        } else {
            backoff -= (backoff + 15) / 16
        }
    }

    /// Records a wait: `wait` nanoseconds from going idle until work came, with `inFlight`
    /// answers due when it began.
    public mutating func record(wait: UInt64, inFlight: Int) {
        if inFlight > 0 { due.add(wait) } else { idle.add(wait) }
    }
}

/// Recent wait lengths in buckets of powers of two, older waits weighing less: bucket 0
/// holds waits under 256 ns, bucket k (k ≥ 1) those in [2^(k-1), 2^k) · 256 ns, the last
/// one everything longer (from 67 ms on).
struct WaitHistogram: Sendable {
    static let buckets = 20
    /// Each wait adds this weight; when the total reaches ``full`` every weight halves, so
    /// about the last 64 waits decide.
    static let step: UInt32 = 16
    static let full: UInt32 = 1024

    private var weights = InlineArray<20, UInt32>(repeating: 0)
    private(set) var total: UInt32 = 0

    static func bucket(_ ns: UInt64) -> Int {
        let scaled = ns >> 8
        return min(buckets - 1, 64 - scaled.leadingZeroBitCount)
    }

    /// The longest wait bucket `k` holds (the last bucket's bound is nominal).
    static func upperBound(_ k: Int) -> UInt64 { 256 << UInt64(k) }

    /// A typical wait of bucket `k`: three quarters of its bound, inside [bound/2, bound).
    static func typical(_ k: Int) -> UInt64 { upperBound(k) / 4 * 3 }

    mutating func add(_ ns: UInt64) {
        weights[Self.bucket(ns)] += Self.step
        total += Self.step
        guard total >= Self.full else { return }
        total = 0
        for k in 0..<Self.buckets {
            weights[k] /= 2
            total += weights[k]
        }
    }

    /// The bucket bound `B ≤ limit` with the largest `P(wait ≤ B) · worth − E[min(wait, B)]`
    /// if positive, else 0; with no waits measured, a probe of `min(limit, worth)`.
    func bestSpin(worth: UInt64, limit: UInt64) -> UInt64 {
        guard total > 0 else { return min(limit, worth) }
        // Scaled by the total weight, in Int64: weights ≤ 1040, times ≤ 2^27 ns, no overflow.
        let total = Int64(self.total), worth = Int64(min(worth, 1 << 40))
        var caught: Int64 = 0  // weight of waits ≤ B
        var spentOnCaught: Int64 = 0  // Σ weight · typical wait, of those
        var best: (gain: Int64, bound: UInt64) = (0, 0)
        for k in 0..<Self.buckets - 1 {
            let bound = Self.upperBound(k)
            if bound > limit { break }
            let w = Int64(weights[k])
            caught += w
            spentOnCaught += w * Int64(Self.typical(k))
            let gain = caught * worth - spentOnCaught - (total - caught) * Int64(bound)
            if gain > best.gain { best = (gain, bound) }
        }
        return best.bound
    }
}
