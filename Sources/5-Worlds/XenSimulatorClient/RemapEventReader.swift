import CPageTracking
import CXen
import Glibc
import XenLocks

/// Reads a userfaultfd's event messages on a thread of its own while this process
/// moves mappings registered with it. The descriptor asked for remap events
/// (`cpt_uffd_open(1)`), so the kernel moves such a mapping a page-table page at a
/// time and keeps it registered, and the `mremap` then waits until someone reads its
/// `UFFD_EVENT_REMAP`: this reader does.
final class RemapEventReader: Sendable {
    private let stop: Int32

    /// Starts reading a copy of `uffd`; nil (and nothing started) if no descriptor
    /// could be made.
    init?(uffd: Int32) {
        let copy = fcntl(uffd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return nil }
        let stop = cxen_eventfd(0, 0)
        guard stop >= 0 else {
            close(copy)
            return nil
        }
        self.stop = stop
        // The thread owns both descriptors: it reads until told to stop, then closes them.
        startDetachedThread(named: "remap-events") {
            _ = cpt_uffd_drain_events(copy, stop)
            close(copy)
            close(stop)
        }
    }

    /// Tells the reader to stop once it read every event queued so far (a move that
    /// returned had its event read). Call it once, after the last move.
    func finish() {
        var one: UInt64 = 1
        _ = write(stop, &one, 8)
    }
}
