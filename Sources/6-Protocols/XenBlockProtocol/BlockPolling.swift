import Glibc

/// When a block queue thread (blkfront or blkback) polls instead of sleeping.
///
/// A thread that sleeps on its event channel pays a wake-up per hop, and waking an idle
/// vCPU is slow: an eventfd round trip between two threads costs tens of microseconds
/// (the README's block section has the measurement), far more than when both share a
/// core. A 4 KiB read at queue depth 1 crosses the ring twice, so sleeping on both sides
/// can double the latency of a fast device. So a queue thread polls while an answer is due — the frontend with requests
/// on the ring, the backend with operations at the engine — for up to ``busy``; and for
/// ``idle`` after its last piece of work, since the peer's next request usually follows
/// a response within microseconds. It never polls with nothing in flight for longer.
///
/// The queue threads' runtime does the polling (`Spin`); these are its budgets.
/// `XENPV_BLOCK_SPIN_US` sets ``busy`` (0 turns polling off: sleep at once, spend no CPU
/// waiting).
public enum BlockPolling {
    /// How long to poll while an answer is due.
    public static let busy: Duration = .microseconds(configuredMicroseconds ?? 1000)
    /// How long to poll after the last piece of work when nothing is due.
    public static let idle: Duration = min(busy, .microseconds(50))
    /// Work items one loop pass handles before publishing: what it finished reaches the
    /// (polling) peer while it works on the rest, instead of a whole queue depth at once.
    public static let batch = 4

    private static let configuredMicroseconds: Int64? = {
        guard let text = getenv("XENPV_BLOCK_SPIN_US"), let us = Int64(String(cString: text)), us >= 0 else { return nil }
        return min(us, 100_000)
    }()
}
