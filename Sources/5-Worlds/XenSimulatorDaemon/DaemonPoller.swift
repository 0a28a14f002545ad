import CXen
import Glibc
import Logging
import XenLocks

/// The daemon loop's poll set: its three own descriptors and one per
/// connection, kept in step with the connection table (added on accept,
/// swapped out on close), so a turn costs one `poll` and no rebuilding.
struct DaemonPoller {
    private var fds: [pollfd]
    private var owners: [HypervisorDaemon.Connection?]
    private var index: [ObjectIdentifier: Int] = [:]
    /// Whether the listening socket is polled (off while accepts back off).
    var listening = true

    struct Ready {
        var stop = false
        var posted = false
        var listener = false
        var connections: [(HypervisorDaemon.Connection, Int16)] = []
    }

    init(listen: Int32, stop: Int32, posted: Int32) {
        let events = Int16(POLLIN)
        fds = [pollfd(fd: listen, events: events, revents: 0), pollfd(fd: stop, events: events, revents: 0),
               pollfd(fd: posted, events: events, revents: 0)]
        owners = [nil, nil, nil]
    }

    var all: [HypervisorDaemon.Connection] { owners.compactMap { $0 } }

    mutating func add(_ conn: HypervisorDaemon.Connection) {
        index[ObjectIdentifier(conn)] = fds.count
        fds.append(pollfd(fd: conn.fd, events: Int16(POLLIN), revents: 0))
        owners.append(conn)
    }

    mutating func remove(_ conn: HypervisorDaemon.Connection) {
        guard let i = index.removeValue(forKey: ObjectIdentifier(conn)) else { return }
        let last = fds.count - 1
        if i != last {
            fds[i] = fds[last]
            owners[i] = owners[last]
            if let moved = owners[i] { index[ObjectIdentifier(moved)] = i }
        }
        fds.removeLast()
        owners.removeLast()
    }

    /// Stops reading `conn` (hang-ups are still reported) while its reply is prepared.
    mutating func pause(_ conn: HypervisorDaemon.Connection) { setEvents(conn, 0) }
    mutating func resume(_ conn: HypervisorDaemon.Connection) { setEvents(conn, Int16(POLLIN)) }

    private mutating func setEvents(_ conn: HypervisorDaemon.Connection, _ events: Int16) {
        if let i = index[ObjectIdentifier(conn)] { fds[i].events = events }
    }

    mutating func wait(timeoutMS: Int32) -> Ready {
        fds[0].events = listening ? Int16(POLLIN) : 0
        var ready = Ready()
        let n = poll(&fds, nfds_t(fds.count), timeoutMS)
        guard n > 0 else { return ready }
        ready.listener = fds[0].revents != 0
        ready.stop = fds[1].revents != 0
        ready.posted = fds[2].revents != 0
        for i in 3..<fds.count where fds[i].revents != 0 {
            if let conn = owners[i] { ready.connections.append((conn, fds[i].revents)) }
        }
        return ready
    }
}

/// A warning that a hostile client could repeat without end, logged at most
/// once per interval with a count of what was held back.
final class RateLimitedLog: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = Lock()
    private let interval: UInt64
    private var last: UInt64 = 0
    private var suppressed = 0

    init(interval seconds: Double) { interval = UInt64(seconds * 1e9) }

    func log(_ logger: Logger, _ message: @autoclosure () -> String) {
        let now = cxen_monotonic_ns()
        let held: Int? = lock.withLock {
            guard last == 0 || now &- last >= interval else {
                suppressed += 1
                return nil
            }
            last = now
            defer { suppressed = 0 }
            return suppressed
        }
        guard let held else { return }
        logger.warning("\(message())\(held > 0 ? " (\(held) more like it held back)" : "")")
    }
}
