import Glibc

/// How a block queue thread (blkfront or blkback) polls instead of sleeping.
///
/// A thread that sleeps on its event channel pays a wake-up per hop, and waking an idle
/// vCPU is slow: an eventfd round trip between two threads costs tens of microseconds
/// (the README's block section has the measurement), far more than when both share a
/// core. A 4 KiB read at queue depth 1 crosses the ring twice, so sleeping on both sides
/// can double the latency of a fast device. Polling costs CPU, though, which on a busy
/// machine is what the rest of the path needs: at queue depth 32 on a disk, polling a
/// fixed 1 ms doubled the CPU per I/O and cost a fifth of the throughput.
///
/// So each queue thread's runtime measures how long its waits take and spins only while
/// that pays (`SpinPolicy` in XenDriverRuntime, which weighs a spared wake-up at
/// ``wakeUpWorth`` shared by what is in flight); these are its bounds. The frontend
/// counts requests on its ring as in flight, the backend operations at its engine.
///
/// `XENPV_BLOCK_SPIN_US`, for experiments only, sets ``limit`` (0 turns polling off:
/// sleep at once, spend no CPU waiting).
public enum BlockPolling {
    /// The longest spin before sleeping: 1 ms (a disk's answer at queue depth 1 comes
    /// well within it), or `XENPV_BLOCK_SPIN_US`.
    public static let limit: Duration = .microseconds(configuredMicroseconds ?? 1000)
    /// What sparing a request a wake-up is worth in spin time, when that request is all
    /// that is in flight: 200 µs, so at queue depth 1 a thread spins for a disk's
    /// 60–120 µs answers (QD1 latency is wake-ups otherwise), at queue depth 32 only for
    /// answers a few µs apart (CPU-bound, as on tmpfs), not for a disk's 20 µs.
    public static let wakeUpWorth: Duration = .microseconds(200)
    /// What sparing a wake-up is worth to all of blkfront's answers due together: 3.2 ms,
    /// shared by what is in flight, each at most ``wakeUpWorth`` (100 µs each at queue depth
    /// 32, against 6 µs before), so at depth it spins for answers that come a few µs apart (a
    /// CPU-bound path: tmpfs, or the NBD export, whose thread also serves the socket), where
    /// sleeping left them on the ring while the caller waited; a disk's come too far apart
    /// for the spin to pay, and the policy does not take it. Measured (5 December,
    /// `Benchmarks/NBDExport/run.sh` and `compare-builds.sh`, three rounds): NBD export
    /// randread QD 32 0.76× → 0.93–0.95× of nbdkit, randwrite 0.67× → 0.72–0.74×; tmpfs
    /// libaio qd32 0.78× → 0.84× of fio; on a disk within the spread. blkback spinning as
    /// much for its engine's completions raised its CPU per I/O on a disk 1.77× → 2.07× of
    /// fio's, so it keeps ``wakeUpWorth`` shared.
    public static let frontendAnswersWorth: Duration = .microseconds(3200)
    /// Responses blkfront answers in one turn before it sends what their callers asked
    /// next: their requests reach blkback while the rest of the batch waits.
    public static let frontendBatch = 8
    /// Completions blkback takes from its engine in one turn before it publishes their
    /// responses. Each publication to a sleeping blkfront costs a wake-up, and blkback
    /// submits between two turns, so on a disk, whose completions come together, four at a
    /// time woke blkfront five times per queue depth of 32; sixteen do it about twice, and a
    /// polling blkfront still gets the first answers before the last are reaped.
    /// Measured against four and four (5 December, `compare-builds.sh`, ext4 file, four
    /// rounds, 4 KiB at queue depth 32): blkfront's sleeps per request 0.15 → 0.05, CPU per
    /// I/O ÷ fio's 1.33× → 1.10× (io_uring reads), 1.36× → 1.22× (libaio reads), 1.16× →
    /// 1.04× and 1.25× → 1.12× (writes), IOPS within the rounds' spread; tmpfs and the NBD
    /// export unchanged within theirs.
    public static let backendBatch = 16

    private static let configuredMicroseconds: Int64? = {
        guard let text = getenv("XENPV_BLOCK_SPIN_US"), let us = Int64(String(cString: text)), us >= 0 else { return nil }
        return min(us, 100_000)
    }()
}
