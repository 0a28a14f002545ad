import XenLocks
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// An event-channel handle of a joined process, shaped like `xenevtchn`.
///
/// Each port lives on a channel page shared with its peer's process only (see
/// `ChannelPage`); the handle's descriptor is the read end of a wake pipe
/// (`WakePipe`) whose write end the daemon gives to the peer. `notify` and `pending` touch
/// only those pages and pipes: the daemon is asked once per connection for the
/// peer's wake pipe, never per event.
///
/// The descriptor is readable while an event may be pending: `pending()` empties
/// the pipe only after a scan found nothing and re-scans afterwards, so a notify
/// racing the drain is either seen by the re-scan or leaves a byte in the pipe.
final class RemoteEventChannels: EventChannels, @unchecked Sendable {
    // @unchecked: `ports` and `closed` are guarded by `lock`; port records'
    // mutable fields (`peerFD`, `generation`) too. The lock is uncontended on
    // the data path (one driver thread per handle).
    private let hypervisor: RemoteHypervisor
    private let wake: WakePipe
    private let lock = Lock()
    private var ports: [UInt32: Port] = [:]
    private var closed = false

    /// One bound port: its channel page, its end, its peer's wake pipe.
    final class Port {
        let number: UInt32
        let page: ChannelPage
        let end: Int
        /// The peer's wake pipe write end for `generation`, -1 when unknown.
        var peerFD: Int32
        var generation: UInt32
        /// The hypervisor's epoch at bind: a port of an older one is gone (the domain moved).
        var epoch: UInt64 = 0

        init(number: UInt32, page: ChannelPage, end: Int, peerFD: Int32, generation: UInt32) {
            self.number = number
            self.page = page
            self.end = end
            self.peerFD = peerFD
            self.generation = generation
        }

        deinit {
            munmap(page.base, XenPage.size)
            if peerFD >= 0 { Glibc.close(peerFD) }
        }
    }

    // relaxed: compared only; a bind racing a move belongs to either epoch.
    private var currentEpoch: UInt64 { hypervisor.epoch.load(ordering: .relaxed) }

    init(hypervisor: RemoteHypervisor) throws(HypervisorError) {
        guard let wake = WakePipe.make() else { throw .errno(Errno(rawValue: errno), "pipe for an event-channel handle") }
        self.hypervisor = hypervisor
        self.wake = wake
    }

    deinit {
        close()
        Glibc.close(wake.read)
        Glibc.close(wake.write)
    }

    var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: wake.read) }

    private func checkOpen() throws(HypervisorError) {
        if lock.withLock({ closed }) { throw HypervisorError(.closed, "event-channel handle is closed") }
    }

    func bindUnbound(remote: DomainID) throws(HypervisorError) -> EventPort {
        try checkOpen()
        let remote = remote == .current ? hypervisor.domainID : remote
        let reply = try hypervisor.link.call(
            WireMessage([DaemonOp.bindUnbound.rawValue, UInt64(remote.rawValue)], fds: [wake.write]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        guard reply.words.count >= 2, reply.fds.count == 1 else { throw HypervisorError(.closed, "malformed bind reply") }
        let page = ChannelPage(base: try Mapping.map(reply.fds[0], bytes: XenPage.size))
        let number = UInt32(truncatingIfNeeded: reply.words[1])
        let port = Port(number: number, page: page, end: 0, peerFD: -1, generation: 0)
        port.epoch = currentEpoch
        lock.withLock { ports[number] = port }
        return EventPort(number)
    }

    func bindInterdomain(remote: DomainID, remotePort: EventPort) throws(HypervisorError) -> EventPort {
        try checkOpen()
        let remote = remote == .current ? hypervisor.domainID : remote
        let reply = try hypervisor.link.call(
            WireMessage([DaemonOp.bindInterdomain.rawValue, UInt64(remote.rawValue), UInt64(remotePort.rawValue)], fds: [wake.write]))
        guard reply.words.count >= 3, reply.fds.count == 2 else {
            for fd in reply.fds { Glibc.close(fd) }
            throw HypervisorError(.closed, "malformed bind reply")
        }
        defer { Glibc.close(reply.fds[0]) }
        let base: UnsafeMutableRawPointer
        do { base = try Mapping.map(reply.fds[0], bytes: XenPage.size) } catch {
            Glibc.close(reply.fds[1])
            throw error
        }
        let number = UInt32(truncatingIfNeeded: reply.words[1])
        let port = Port(number: number, page: ChannelPage(base: base), end: 1, peerFD: WakePipe.adoptPeer(reply.fds[1]) ?? -1,
                        generation: UInt32(truncatingIfNeeded: reply.words[2]))
        port.epoch = currentEpoch
        lock.withLock { ports[number] = port }
        // The daemon set our end pending, as Xen does for a new interdomain
        // port: notifications sent while it was unbound may have been lost.
        WakePipe.wake(wake.write)
        return EventPort(number)
    }

    func notify(_ port: EventPort) throws(HypervisorError) {
        let p = port.rawValue
        // One uncontended lock: the port's record and its cached peer.
        let (record, fd, generation, isClosed) = lock.withLock { () -> (Port?, Int32, UInt32, Bool) in
            guard let r = ports[p] else { return (nil, -1, 0, closed) }
            return (r, r.peerFD, r.generation, closed)
        }
        if isClosed { throw HypervisorError(.closed, "notify on a closed event-channel handle") }
        guard let record, record.epoch == currentEpoch else { throw .errno(.socketNotConnected, "notify: \(port) not bound through this handle") }
        // acquiring: the state word is the daemon's publication of the peer; what it
        // set up before (the peer's end) is visible once we see it connected.
        let state = record.page.state.load(ordering: .acquiring)
        guard state & 0xFF == ChannelPage.connected else {
            throw .errno(.socketNotConnected, "notify: \(port) has no connected peer")
        }
        let target = fd >= 0 && generation == state >> 8 ? fd : try refreshPeer(record)
        if record.page.setPending(1 - record.end) { WakePipe.wake(target) }
    }

    /// Asks the daemon for the peer's wake end after the peer (re)connected:
    /// once per connection, never per event.
    private func refreshPeer(_ record: Port) throws(HypervisorError) -> Int32 {
        let reply = try hypervisor.link.call(WireMessage([DaemonOp.peer.rawValue, UInt64(record.number)]))
        guard reply.words.count >= 2, reply.fds.count == 1 else {
            for fd in reply.fds { Glibc.close(fd) }
            throw .errno(.socketNotConnected, "notify: \(record.number) has no connected peer")
        }
        guard let fd = WakePipe.adoptPeer(reply.fds[0]) else {
            throw .errno(.socketNotConnected, "notify: the peer of \(record.number) gave no wake pipe")
        }
        return lock.withLock {
            if record.peerFD >= 0 { Glibc.close(record.peerFD) }
            record.peerFD = fd
            record.generation = UInt32(truncatingIfNeeded: reply.words[1])
            return record.peerFD
        }
    }

    func pending() throws(HypervisorError) -> EventPort? {
        if let p = try scan() { return p }
        WakePipe.drain(wake.read)
        return try scan()
    }

    private func scan() throws(HypervisorError) -> EventPort? {
        try lock.withLock { () throws(HypervisorError) -> EventPort? in
            if closed { throw HypervisorError(.closed, "pending on a closed event-channel handle") }
            let now = currentEpoch
            // Ports from before a move are gone: dropped here, never reported.
            for (number, port) in ports where port.epoch != now { ports[number] = nil }
            for (number, port) in ports where port.page.claim(port.end) { return EventPort(number) }
            return nil
        }
    }

    func unmask(_ port: EventPort) throws(HypervisorError) {
        let record = try lock.withLock { () throws(HypervisorError) -> Port in
            if closed { throw HypervisorError(.closed, "unmask on a closed event-channel handle") }
            guard let r = ports[port.rawValue] else { throw .errno(.socketNotConnected, "unmask: \(port) not bound through this handle") }
            return r
        }
        if record.page.unmask(record.end) { WakePipe.wake(wake.write) }
    }

    func unbind(_ port: EventPort) throws(HypervisorError) {
        try checkOpen()
        guard let record = lock.withLock({ ports[port.rawValue] }) else {
            throw .errno(.socketNotConnected, "unbind: \(port) not bound through this handle")
        }
        if record.epoch != currentEpoch {
            // Gone with the old host: nothing to release.
            lock.withLock { if ports[port.rawValue] === record { ports[port.rawValue] = nil } }
            return
        }
        _ = try hypervisor.link.call(WireMessage([DaemonOp.unbind.rawValue, UInt64(port.rawValue)]))
        _ = lock.withLock { ports.removeValue(forKey: port.rawValue) }
    }

    func close() {
        let bound: [UInt32] = lock.withLock {
            if closed { return [] }
            closed = true
            return Array(ports.keys)
        }
        for p in bound where lock.withLock({ ports[p]?.epoch == currentEpoch }) { _ = try? hypervisor.link.call(WireMessage([DaemonOp.unbind.rawValue, UInt64(p)])) }
        lock.withLock { ports = [:] }
    }
}
