import Atomics
import CXen
import Glibc
import SystemPackage
import XenABI

/// The shared state of one interdomain event channel, in a one-page memfd the
/// daemon creates when a port is allocated unbound and hands to the two
/// processes at its ends (and to nobody else).
///
/// Layout (all little-endian 32-bit words, each end on its own cache line):
///
/// | offset | word |
/// | --- | --- |
/// | 0 | state: bits 0–7 `unbound` 0 / `connected` 1 / `closed` 2; bits 8–31 the connection's generation |
/// | 64, 68 | end 0 (the port allocated unbound): pending, masked |
/// | 128, 132 | end 1 (the port bound to it): pending, masked |
///
/// These are the per-port bits of Xen's 2-level ABI (`evtchn_pending`,
/// `evtchn_mask`), kept per channel rather than per domain so a process
/// receives the event state of its own channels only: a hostile domU can
/// raise, mask or clear events of a channel it is an end of, which it can do
/// in Xen too, and nothing else. Only the daemon writes the state word.
package struct ChannelPage: @unchecked Sendable {
    // @unchecked: a mapped page shared between processes; every field is
    // accessed through atomics.
    package let base: UnsafeMutableRawPointer

    /// The channel page mapped at `base`.
    package init(base: UnsafeMutableRawPointer) { self.base = base }

    package static let unbound: UInt32 = 0
    package static let connected: UInt32 = 1
    package static let closed: UInt32 = 2

    @inline(__always) private func word(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (base + offset).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
    }

    @inline(__always) package var state: UnsafeAtomic<UInt32> { word(0) }
    @inline(__always) package func pending(_ end: Int) -> UnsafeAtomic<UInt32> { word(64 + 64 * end) }
    @inline(__always) package func masked(_ end: Int) -> UnsafeAtomic<UInt32> { word(68 + 64 * end) }

    package static func encode(state: UInt32, generation: UInt32) -> UInt32 { state | generation << 8 }

    /// Sets `end` pending (`evtchn_2l_set_pending`); true when the caller
    /// must wake the end's handle: a 0 to 1 transition of an unmasked port.
    @inline(__always) package func setPending(_ end: Int) -> Bool {
        // sequentiallyConsistent (here and in unmask): set-pending-then-read-mask
        // against clear-mask-then-read-pending is Dekker's pattern; a total
        // order makes at least one side see the other, so no event is lost.
        if pending(end).exchange(1, ordering: .sequentiallyConsistent) != 0 { return false }
        return masked(end).load(ordering: .sequentiallyConsistent) == 0
    }

    /// Takes a ready event of `end`: masks the port, then clears pending (as
    /// the Linux driver masks a port when it fires). True if one was taken.
    @inline(__always) package func claim(_ end: Int) -> Bool {
        // relaxed pre-check: a cheap skip; the exchanges below decide.
        if pending(end).load(ordering: .relaxed) == 0 || masked(end).load(ordering: .relaxed) != 0 { return false }
        // sequentiallyConsistent: mask before clearing pending, so a notify in
        // between leaves the port pending and masked, never lost.
        if masked(end).exchange(1, ordering: .sequentiallyConsistent) != 0 { return false }
        if pending(end).exchange(0, ordering: .sequentiallyConsistent) != 0 { return true }
        // Nothing was pending after all (a peer cleared it): re-arm.
        masked(end).store(0, ordering: .sequentiallyConsistent)
        return false
    }

    /// Clears the mask (`evtchn_2l_unmask`); true when the port is pending and
    /// the caller must wake its own handle.
    @inline(__always) package func unmask(_ end: Int) -> Bool {
        // sequentiallyConsistent: the other half of setPending's Dekker pair.
        let was = masked(end).exchange(0, ordering: .sequentiallyConsistent)
        return was != 0 && pending(end).load(ordering: .sequentiallyConsistent) != 0
    }
}

/// The wake-up side of an event-channel handle: a non-blocking pipe. The
/// handle polls the read end; the daemon passes the write end to the
/// processes at the far end of its channels. A peer can wake the handle (as a
/// notify may) but cannot swallow its wake-ups (it could with a shared eventfd).
///
/// A pipe, not a datagram socket: a wake is on the data path whenever the
/// peer sleeps, and write+drain costs about a third of send+drain here.
///
/// A peer never writes to the descriptor it was sent: `adoptPeer` reopens it
/// through `/proc/self/fd` as a FIFO with its own non-blocking file
/// description, so whatever a hostile peer sent or later does to its own
/// description (clear `O_NONBLOCK`, fill the pipe), a notify never blocks.
/// A closed reader gives `EPIPE`, not `SIGPIPE`: joining ignores that signal.
package struct WakePipe {
    package let read: Int32
    package let write: Int32

    package static func make() -> WakePipe? {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return WakePipe(read: fds[0], write: fds[1])
    }

    /// This process's own non-blocking write description of the pipe behind
    /// `received` (which is closed); nil if it is not a pipe.
    package static func adoptPeer(_ received: Int32) -> Int32? {
        defer { Glibc.close(received) }
        let fd = open("/proc/self/fd/\(received)", O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFIFO else {
            Glibc.close(fd)
            return nil
        }
        return fd
    }

    /// Wakes the handle behind `fd`. A full pipe is already readable, so
    /// `EAGAIN` is success; `EPIPE` means the handle is gone.
    @inline(__always) package static func wake(_ fd: Int32) {
        var one: UInt8 = 1
        while Glibc.write(fd, &one, 1) < 0 && errno == EINTR {}
    }

    /// Empties the read end: one read, unless it came back full (then the pipe may hold more).
    package static func drain(_ fd: Int32) {
        var sink = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let size = MemoryLayout.size(ofValue: sink)
        while withUnsafeMutableBytes(of: &sink, { Glibc.read(fd, $0.baseAddress, size) }) == size {}
    }
}
