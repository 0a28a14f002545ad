import Atomics
import Foundation
import Glibc
import Logging
import NBDProtocol
import XenLocks

/// A block device served as an NBD export (fixed newstyle, simple replies), so unmodified
/// NBD clients (`nbdinfo`, `qemu-io`, `qemu-img`, `nbdcopy`, `fio --ioengine=nbd`) use it.
///
/// Each connection gets a reader thread (the handshake), then its requests are taken off
/// the socket by the device's own thread where it has one (blkfront's queue thread, which
/// puts them on the ring: no thread between the client and the ring) or by the reader,
/// each checked against the export before any of its data is read; they run on the
/// device's callback or `async` API, several at once, and a writer thread sends the
/// replies the socket could not take at once. A client that sends garbage, announces a write larger than the maximum
/// block size, or goes away mid-request loses its connection and nothing else; what each
/// connection has in flight is bounded (``BlockExportLimits``).
public final class BlockExportServer: Sendable {
    private let device: any BlockExportDevice
    /// The export's name (`NBD_OPT_GO` with an empty name gets it too).
    public let name: String
    private let limits: BlockExportLimits
    private let logger: Logger
    private let state = Locked(State())
    /// ``BlockExportCounters/replies`` and ``BlockExportCounters/replySends``: counted on every
    /// send, so atomics rather than `state`'s lock, which every connection would take.
    private let repliesSent = ManagedAtomic(0)
    private let replySends = ManagedAtomic(0)
    /// ``BlockExportCounters/requestsTakenByDevice`` and ``BlockExportCounters/requestsTakenByConnections``.
    private let takenByDevice = ManagedAtomic(0)
    private let takenByConnections = ManagedAtomic(0)

    private struct State: @unchecked Sendable {
        // @unchecked: connections are only handed around under this lock.
        var listeners: [(fd: Int32, address: BlockExportAddress)] = []
        var connections: [ObjectIdentifier: ExportConnection] = [:]
        var acceptThreads = 0
        var stopping = false
        var counters = BlockExportCounters()
    }

    /// An export of `device` named `name`; the device must have a geometry an NBD client can use.
    public init(device: any BlockExportDevice, name: String = "xvda", limits: BlockExportLimits = BlockExportLimits(),
                logger: Logger = Logger(label: "xenpv.nbd")) throws(BlockExportError) {
        guard let g = device.exportGeometry else { throw BlockExportError(.badDevice, "the device is not connected") }
        let terms = ExportTerms(geometry: g, limits: limits)
        do { try terms.blockSizes.validate(exportSize: g.size) } catch {
            throw BlockExportError(.badDevice, "block sizes of the device", underlying: error)
        }
        guard g.size % UInt64(terms.blockSizes.minimum) == 0 else {
            throw BlockExportError(.badDevice, "a size of \(g.size) bytes is not a whole number of \(terms.blockSizes.minimum)-byte sectors")
        }
        guard Array(name.utf8).count <= NBDLimits.maximumString, !name.utf8.contains(0) else {
            throw BlockExportError(.badDevice, "an export name is at most 4096 bytes without NUL")
        }
        self.device = device
        self.name = name
        self.limits = limits
        self.logger = logger
    }

    /// What the server has done so far.
    public var counters: BlockExportCounters {
        var c = state.withLock { $0.counters }
        // relaxed: figures for display and tests, not a guard of anything else.
        c.replies = repliesSent.load(ordering: .relaxed)
        c.replySends = replySends.load(ordering: .relaxed)
        c.requestsTakenByDevice = takenByDevice.load(ordering: .relaxed)
        c.requestsTakenByConnections = takenByConnections.load(ordering: .relaxed)
        return c
    }

    /// Starts accepting clients on `address`; returns the address bound (a TCP port of 0 filled in).
    @discardableResult
    public func listen(on address: BlockExportAddress) throws(BlockExportError) -> BlockExportAddress {
        let (fd, bound) = try ExportSocket.listen(address)
        let stopping = state.withLock { s in
            if !s.stopping {
                s.listeners.append((fd, bound))
                s.acceptThreads += 1
            }
            return s.stopping
        }
        if stopping {
            close(fd)
            throw BlockExportError(.system, "the server is shutting down")
        }
        startDetachedThread(named: "nbd-accept") { [self] in acceptLoop(fd, tcp: { if case .tcp = bound { true } else { false } }()) }
        logger.notice("nbd: serving \(name) on \(bound)")
        return bound
    }

    private func acceptLoop(_ listener: Int32, tcp: Bool) {
        defer { state.withLock { $0.acceptThreads -= 1 } }
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                let e = errno
                if e == EINTR || e == ECONNABORTED { continue }
                if state.withLock({ $0.stopping }) { return }
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                    // Out of descriptors: pause rather than spin; service resumes when some close.
                    logger.warning("nbd: accept: \(String(cString: strerror(e))); pausing 100 ms")
                    usleep(100_000)
                    continue
                }
                logger.error("nbd: accept: \(String(cString: strerror(e)))")
                return
            }
            // accept4 is GNU-only; the window before FD_CLOEXEC matters only to a process that forks.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            if tcp { ExportSocket.noDelay(fd) }
            let connection = ExportConnection(fd: fd, device: device, name: name, limits: limits, logger: logger, onSent: { [repliesSent, replySends] n in
                repliesSent.wrappingIncrement(by: n, ordering: .relaxed)
                replySends.wrappingIncrement(ordering: .relaxed)
            }, onTaken: { [takenByDevice, takenByConnections] n, byDevice in
                (byDevice ? takenByDevice : takenByConnections).wrappingIncrement(by: n, ordering: .relaxed)
            }) { [weak self] c in
                self?.state.withLock { s in
                    s.connections[ObjectIdentifier(c)] = nil
                    s.counters.closed += 1
                }
            }
            let admitted = state.withLock { s in
                guard !s.stopping, s.connections.count < limits.connections else {
                    s.counters.refused += 1
                    return false
                }
                s.connections[ObjectIdentifier(connection)] = connection
                s.counters.accepted += 1
                return true
            }
            guard admitted else {
                close(fd)
                continue
            }
            connection.start()
        }
    }

    /// Stops accepting, removes Unix socket files, and hard-disconnects every client;
    /// returns at once (``stopped(timeout:)`` or ``waitUntilStopped()`` wait for the threads).
    public func shutdown() {
        let (listeners, connections) = state.withLock { s -> ([(fd: Int32, address: BlockExportAddress)], [ExportConnection]) in
            let first = !s.stopping
            s.stopping = true
            return first ? (s.listeners, Array(s.connections.values)) : ([], Array(s.connections.values))
        }
        for l in listeners {
            // On Linux, shutting a listening socket down wakes its blocked accept.
            Glibc.shutdown(l.fd, Int32(SHUT_RDWR))
            if case .unix(let path) = l.address { unlink(path) }
        }
        for c in connections { c.hangUp() }
    }

    private var idle: Bool { state.withLock { $0.acceptThreads == 0 && $0.connections.isEmpty } }

    private func closeListeners() {
        let fds = state.withLock { s in defer { s.listeners = [] }; return s.listeners.map(\.fd) }
        for fd in fds { close(fd) }
    }

    /// After ``shutdown()``: waits (sleeping between looks, not holding a thread) until every
    /// thread has exited; false if `timeout` passed first. Requests still at the device
    /// finish first: a device that never answers holds its connection.
    public func stopped(timeout: Duration = .seconds(60)) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !idle {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        closeListeners()
        return true
    }

    /// ``stopped(timeout:)`` for a thread that may block (a command's main thread).
    public func waitUntilStopped() {
        while !idle { usleep(10_000) }
        closeListeners()
    }
}

/// What a ``BlockExportServer`` has done.
public struct BlockExportCounters: Hashable, Sendable {
    /// Connections admitted.
    public var accepted = 0
    /// Connections closed on accept (over the limit, or shutting down).
    public var refused = 0
    /// Admitted connections that have ended (for any reason).
    public var closed = 0
    /// Replies put on the socket whole.
    public var replies = 0
    /// Sends that carried them: fewer than ``replies`` when replies finished together went
    /// out in one `sendmsg`.
    public var replySends = 0
    /// Requests taken off the clients' sockets by the device's own thread (blkfront's queue
    /// thread, see ``BlockExportDevice/serveInput(_:descriptor:)``).
    public var requestsTakenByDevice = 0
    /// Requests taken by the connections' own reader threads (a device without a thread
    /// for them, or one that closed).
    public var requestsTakenByConnections = 0
    /// Creates zeroed counters.
    public init() {}
}
