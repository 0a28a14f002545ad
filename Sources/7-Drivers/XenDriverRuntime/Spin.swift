import CXen
import Glibc

/// Bounded busy-polling before a driver thread sleeps.
///
/// A wake-up through an event channel costs tens of microseconds on an idle vCPU, and
/// the peer's next message often follows within a few: polling for a short, bounded
/// while saves the round trip. Bounded, so an idle ring costs no CPU.
public enum Spin {
    /// A polling thread lets a thread waiting for its core run this often (on an
    /// oversubscribed machine the peer it polls for may be that thread).
    static let yieldEvery: UInt64 = 20_000

    /// A gap this long between two looks means the thread was not on a CPU: others
    /// were waiting for it.
    static let preempted: UInt64 = 200_000

    /// A yield that took this long ran another thread on this CPU: one was waiting for it
    /// (perhaps the peer this spin waits for), so the spin is taking a CPU that is wanted.
    static let yieldedAway: UInt64 = 10_000

    /// How a spin ended.
    public enum Outcome: Sendable, Equatable {
        /// `ready` said yes.
        case arrived
        /// The budget ran out.
        case expired
        /// The thread found it had been off the CPU, or that a yield ran another thread
        /// (others were waiting for its CPU): the spin gave up early.
        case preempted
    }

    /// Polls `ready` for up to `budget`; true as soon as it says so. Gives up early when
    /// the thread finds it was preempted: spinning pays only while a CPU is spare, and on
    /// a machine with more runnable threads than CPUs (many queues, parallel tests) the
    /// peer it waits for may be the one it keeps off the CPU.
    @inline(__always)
    public static func poll<E: Error>(for budget: Duration, _ ready: () throws(E) -> Bool) throws(E) -> Bool {
        try poll(nanoseconds: nanoseconds(budget), ready) == .arrived
    }

    /// How many yields that run another thread a driver thread's spin lets through
    /// (``poll(nanoseconds:yieldsThatMayRunOthers:_:)``), given what it waits for.
    /// - One request in flight: any number. The yield already let the other thread run,
    ///   and no other request waits behind this one; a spin stopped for such a turn (the
    ///   kworker that completes a disk write on ext4 takes one per request) made a lone
    ///   request's waits sleeps, 40–50 µs more per write through the NBD export.
    /// - Otherwise, after a turn that notified its peer: none (a peer that slept is often
    ///   woken onto this CPU, so the thread that ran is likely that peer, and the spin only
    ///   keeps it waiting); else one (the thread that ran is more likely a third one, as a
    ///   client between two requests). Nothing in flight counts as otherwise: lenient there,
    ///   blkfront spun through its callers' turns at depth 32 on a disk and lost 5–10 % of
    ///   its reads.
    static func yieldsThatMayRunOthers(inFlight: Int, wokePeer: Bool) -> Int {
        if inFlight == 1 { return .max }
        return wokePeer ? 0 : 1
    }

    /// ``poll(for:_:)`` with the budget in nanoseconds, saying how it ended (0 does not
    /// look: `.expired`). A yield that ran another thread ends the spin as `.preempted`
    /// once more than `yieldsThatMayRunOthers` have: right after this thread woke its peer
    /// (which the scheduler then often places on this CPU) the first one should, since the
    /// spin only keeps that peer waiting; otherwise the thread that ran is more likely a
    /// third one (a client between two requests), and a spin that goes on still spares the
    /// wake-up it is for.
    @inline(__always)
    public static func poll<E: Error>(nanoseconds budget: UInt64, yieldsThatMayRunOthers: Int = 0,
                                      _ ready: () throws(E) -> Bool) throws(E) -> Outcome {
        try poll(nanoseconds: budget, yieldsThatMayRunOthers: yieldsThatMayRunOthers,
                 now: { cxen_monotonic_ns() }, yield: { _ = sched_yield() }, ready)
    }

    /// The spin itself, on a given clock and yield (tests play the scheduler with them).
    @inline(__always)
    static func poll<E: Error>(nanoseconds budget: UInt64, yieldsThatMayRunOthers: Int, now: () -> UInt64,
                               yield: () -> Void, _ ready: () throws(E) -> Bool) throws(E) -> Outcome {
        guard budget > 0 else { return .expired }
        let start = now()
        let end = start &+ budget
        var nextYield = start &+ yieldEvery
        var last = start
        var ranOthers = 0
        while true {
            if try ready() { return .arrived }
            cxen_cpu_relax()
            let t = now()
            if t &- last >= preempted { return .preempted }
            if t >= end { return .expired }
            last = t
            if t >= nextYield {
                yield()
                last = now()
                if last &- t >= yieldedAway {
                    ranOthers += 1
                    if ranOthers > yieldsThatMayRunOthers { return .preempted }
                }
                nextYield = last &+ yieldEvery
            }
        }
    }

    /// `d` in whole nanoseconds, negative durations as 0.
    public static func nanoseconds(_ d: Duration) -> UInt64 {
        let (s, a) = d.components
        return UInt64(max(0, s)) &* 1_000_000_000 &+ UInt64(max(0, a) / 1_000_000_000)
    }
}
