import Glibc
import XenHypervisor

/// The descriptors a driver thread sleeps on, built once (sleeping does not allocate):
/// its stop signal, its event channel, and the service's own (a storage completion
/// descriptor, an attachment, a doorbell), numbered from 0 as `extra`.
public final class PollSet: @unchecked Sendable {
    // @unchecked: touched only by the driver thread that sleeps on it.
    private let fds: UnsafeMutableBufferPointer<pollfd>
    /// The longest sleep: a backstop, and how a service without a descriptor for its
    /// work (an attachment that must be polled) gets its turn.
    public var timeoutMilliseconds: Int32 = 1000

    init(stop: Int32, events: Int32, extras: [Int32]) {
        fds = .allocate(capacity: 2 + extras.count)
        for (i, fd) in ([stop, events] + extras).enumerated() { fds[i] = pollfd(fd: fd, events: Int16(POLLIN), revents: 0) }
    }

    deinit { fds.deallocate() }

    /// Whether the next sleep watches extra descriptor `i` (say, a completion descriptor
    /// only while something is outstanding: a stale one would turn sleeping into spinning).
    public func watch(extra i: Int, _ on: Bool) { fds[2 + i].events = on ? Int16(POLLIN) : 0 }

    /// Whether extra descriptor `i` woke the last sleep.
    public func fired(extra i: Int) -> Bool { fds[2 + i].revents != 0 }

    /// Sleeps until a descriptor is ready; false when the stop signal is.
    func sleep() throws(HypervisorError) -> Bool {
        for i in fds.indices { fds[i].revents = 0 }
        let n = poll(fds.baseAddress, nfds_t(fds.count), timeoutMilliseconds)
        if n < 0, errno != EINTR { throw HypervisorError.errno(.init(rawValue: errno), "poll in a driver thread") }
        return fds[0].revents == 0
    }
}
