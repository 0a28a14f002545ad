import XenLocks
import CXen
import DequeModule
import Dispatch
import Foundation
import Logging
import XenABI
import XenHypervisor
import XenSockets
import XenStore

#if canImport(Glibc)
import Glibc
#endif

/// A xenstore daemon serving the `xs_wire.h` protocol on Unix stream sockets, embedded in a
/// process: one event-loop thread waits (epoll) on every non-blocking connection and
/// services only the ready ones, so a slow, silent or hostile client can only hurt itself
/// and idle ones cost nothing per request.
///
/// Who may connect: the dom0 socket is created 0600 (0660 with a group) whatever the
/// umask, and every connection on it must come from a `TrustedPeers` user (root, the
/// daemon's user, the group); others are closed. Connections are capped per user and in
/// total (`XenStoreQuotas.connections`, `connectionsPerUser`).
///
/// Bounds per connection: a partial message holds at most one header plus
/// `XENSTORE_PAYLOAD_MAX` bytes; a header announcing more closes the connection; a client
/// with `outstandingRequests` unread replies is not read from until it reads them; a guest
/// with more than `queuedWatchEvents` unread watch events is disconnected (XSA-349). A dom0
/// connection is never dropped for events others cause: the connection whose request
/// pushed its queue over the bound is not read from until the watcher has read half of it.
public final class XenStoreServer: @unchecked Sendable {
    // Fields below `loop` are touched only by the loop thread once started.
    private let listenersWanted: [(path: String, domain: DomainID)]
    private let socketAccess: SocketAccess
    private let trusted: TrustedPeers
    private var logger: Logger
    private let engine: XenStoreEngine
    private let quotas: XenStoreQuotas

    private struct Control {
        var stopping = false
        var tasks: [@Sendable (XenStoreEngine) -> Void] = []
        var running = false
    }
    private let control = Locked(Control())
    private let finished = DispatchSemaphore(value: 0)
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private var listeners: [(fd: Int32, domain: DomainID, path: String)] = []
    private var epoll: Epoll?
    private var connections: [Int32: SocketConnection] = [:]
    private var byID: [XenStoreEngine.ConnectionID: SocketConnection] = [:]
    /// Connections that may have whole requests buffered and nothing stopping them.
    private var runnable: [SocketConnection] = []
    private var connectionsPerUID: [uid_t: Int] = [:]
    /// Set while accept fails for want of descriptors: listeners are not polled until then
    /// (or until a connection closes), instead of spinning on a listener accept cannot drain.
    private var listenersPausedUntil: UInt64?
    private var logThrottle = LogThrottle()
    /// How the loop accepts; tests replace it to make accept fail as it does at EMFILE.
    private var acceptConnection: @Sendable (Int32) -> Int32 = { accept($0, nil, nil) }
    /// accept calls made, read on the loop thread (tests check a failing accept is not spun on).
    private var acceptCalls = 0
    /// The most replies ever queued for one connection (bounded by `outstandingRequests`).
    private var peakQueuedReplies = 0

    /// A served connection: a socket, or a guest's shared page and event channel.
    private final class SocketConnection {
        enum Transport {
            case socket(Int32)
            case ring(XenStoreDomainRing, port: EventPort, mapping: GrantMapping)
        }
        let transport: Transport
        let id: XenStoreEngine.ConnectionID
        let domain: DomainID
        /// The peer's user, for the per-user connection cap; nil for rings and adopted sockets.
        var uid: uid_t?
        /// What epoll watches the socket for right now.
        var interest: UInt32 = 0
        var isRunnable = false
        /// The dom0 watcher whose event queue this connection's requests overfilled: it is
        /// not read from until that watcher catches up.
        var blockedBy: SocketConnection?
        /// The connections this one (a dom0 watcher) holds back.
        var blocking: [SocketConnection] = []
        var decoder = XenStoreFrameDecoder()
        var output: Deque<(bytes: [UInt8], isEvent: Bool)> = []
        var headOffset = 0
        var queuedEvents = 0
        var queuedReplies = 0
        init(transport: Transport, id: XenStoreEngine.ConnectionID, domain: DomainID) {
            self.transport = transport
            self.id = id
            self.domain = domain
        }
        var fd: Int32 {
            if case .socket(let fd) = transport { return fd }
            return -1
        }
    }

    // Ring transport state (loop thread only).
    private let hypervisor: (any Hypervisor)?
    private var events: (any EventChannels)?
    private var mapper: (any GrantMapper)?
    private var ringByPort: [EventPort: SocketConnection] = [:]
    private var ringByDomain: [DomainID: SocketConnection] = [:]

    /// A server on `socketPath` whose clients speak for dom0 (as xenstored's socket does).
    /// `extraSockets` adds sockets whose clients speak for a guest domain: tests use them to
    /// act as a domU without a ring. With `hypervisor` (dom0's view), the server also serves
    /// guests through their xenstore page and event channel once they are introduced.
    /// `group` lets that group's members open and use the dom0 socket besides root and
    /// the daemon's own user.
    public init(
        socketPath: String, extraSockets: [(path: String, domain: DomainID)] = [],
        quotas: XenStoreQuotas = XenStoreQuotas(), logger: Logger = Logger(label: "xenstored"),
        hypervisor: (any Hypervisor)? = nil, group: gid_t? = nil
    ) {
        self.socketAccess = SocketAccess(group: group)
        self.trusted = TrustedPeers(group: group)
        self.hypervisor = hypervisor
        self.listenersWanted = [(socketPath, .dom0)] + extraSockets
        self.logger = logger
        self.quotas = quotas
        self.engine = XenStoreEngine(quotas: quotas, logger: logger)
    }

    /// Binds the sockets and starts the event-loop thread.
    public func start() throws(XenStoreError) {
        if let hypervisor {
            do {
                events = try hypervisor.openEventChannels()
                mapper = try hypervisor.openGrantMapper()
            } catch {
                throw XenStoreError(.system, "opening dom0's event channels and grant mapper: \(error)")
            }
            engine.onIntroduce = { [unowned self] domain, frame, port throws(XenStoreError) in
                // The wire's frame is 64 bits (an MFN on Xen); here it names a 32-bit grant
                // reference. Truncating would map whatever grant the low bits name.
                guard let ref = UInt32(exactly: frame) else {
                    throw XenStoreError(.invalid, "INTRODUCE frame \(frame) is not a grant reference")
                }
                try self.attachRing(domain: domain, ringRef: GrantRef(ref), remotePort: EventPort(port))
            }
            engine.onRelease = { [unowned self] domain in
                if let c = self.ringByDomain[domain] { self.drop(c, reason: nil) }
            }
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw Sys.fail("pipe") }
        for fd in fds { Sys.makeNonBlocking(fd) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        let epoll: Epoll
        do { epoll = try Epoll() } catch {
            close(wakeRead); close(wakeWrite)
            throw XenStoreError(.system, "epoll_create1: \(error)")
        }
        self.epoll = epoll
        for (path, domain) in listenersWanted {
            do {
                let fd = try LocalSocket.listen(at: path, kind: .stream, access: socketAccess, nonBlocking: true)
                listeners.append((fd, domain, path))
            } catch {
                for l in listeners { close(l.fd); unlink(l.path) }
                listeners = []
                close(wakeRead); close(wakeWrite)
                epoll.close()
                throw XenStoreError(error.code == .system ? .system : .invalid, "listening on \(path): \(error)")
            }
        }
        epoll.watch(wakeRead, Epoll.readable)
        if let fd = events?.fileDescriptor.rawValue { epoll.watch(fd, Epoll.readable) }
        for l in listeners { epoll.watch(l.fd, Epoll.readable) }
        control.withLock { $0.running = true }
        startDetachedThread(named: "xenstored") { [self] in
            self.run()
            self.finished.signal()
        }
        logger.info("xenstored listening", metadata: ["sockets": "\(listeners.map(\.path))"])
    }

    /// Stops the loop, closes every connection and removes the socket files. Waits at most
    /// `timeout` seconds for the loop thread; returns false if it did not finish in time.
    @discardableResult
    public func stop(timeout: Double = 5) -> Bool {
        let started = control.withLock { state -> Bool in
            let was = state.running && !state.stopping
            state.stopping = true
            return was
        }
        guard started else { return true }
        wake()
        let done = finished.wait(timeout: .now() + timeout) == .success
        if done { logger.info("xenstored stopped") }
        return done
    }

    /// Runs `body` on the loop thread with the engine (to introduce a domain, seed nodes…)
    /// and waits for it, at most 10 s; nil if the server is stopped or did not answer.
    /// Must not be called from the loop thread itself. It blocks the calling thread: async
    /// code uses the `async` form, which suspends instead.
    public func withEngine<R: Sendable>(_ body: @escaping @Sendable (XenStoreEngine) -> R) -> R? {
        let box = Locked<R?>(nil)
        let done = DispatchSemaphore(value: 0)
        let accepted = control.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.tasks.append { engine in
                let r = body(engine)
                box.withLock { $0 = r }
                done.signal()
            }
            return true
        }
        guard accepted else { return nil }
        wake()
        // Bounded: a loop that died (poll failure) must not hang the caller.
        guard done.wait(timeout: .now() + 10) == .success else { return nil }
        return box.withLock { $0 }
    }

    /// `withEngine` for async code: suspends, holding no thread, until the loop thread has
    /// run `body`, at most 10 s; nil if the server is stopped or did not answer by then.
    public func withEngine<R: Sendable>(_ body: @escaping @Sendable (XenStoreEngine) -> R) async -> R? {
        await withCheckedContinuation { (c: CheckedContinuation<R?, Never>) in
            // Resumed exactly once, by whichever comes first: the loop thread with the
            // answer, or the timer with nil (a loop that died must not hang the caller).
            let pending = Locked<CheckedContinuation<R?, Never>?>(c)
            let resume: @Sendable (R?) -> Void = { r in
                pending.withLock { $0.take() }?.resume(returning: r)
            }
            let timer = Task {
                // Cancelled once the loop answered: no resume, and no task left sleeping.
                guard (try? await Task.sleep(for: .seconds(10))) != nil else { return }
                resume(nil)
            }
            let accepted = control.withLock { state -> Bool in
                guard !state.stopping else { return false }
                state.tasks.append { engine in
                    resume(body(engine))
                    timer.cancel()
                }
                return true
            }
            guard accepted else {
                timer.cancel()
                return resume(nil)
            }
            wake()
        }
    }

    /// Serves an already connected stream socket whose client speaks for `domain` (how a
    /// hypervisor daemon hands each joining process its own store connection). The server
    /// owns `fd` from now on; false (and `fd` closed) if the server is stopped.
    @discardableResult
    public func adopt(connectedSocket fd: Int32, as domain: DomainID) -> Bool {
        let accepted = control.withLock { state -> Bool in
            guard !state.stopping && state.running else { return false }
            state.tasks.append { [self] engine in
                Sys.makeNonBlocking(fd)
                let id = engine.connect(domain: domain)
                add(SocketConnection(transport: .socket(fd), id: id, domain: domain))
                logger.debug("\(id) adopted as \(domain)")
            }
            return true
        }
        if accepted { wake() } else { close(fd) }
        return accepted
    }

    // For tests, which are async: each awaits the loop thread (`withEngine`'s async form).

    /// The most replies ever queued for one connection, read on the loop thread.
    func peakQueuedReplyCount() async -> Int? {
        return await withEngine { _ in self.peakQueuedReplies }
    }

    /// Replaces accept(2) on the loop thread (tests make it fail as at EMFILE).
    func setAcceptForTesting(_ body: @escaping @Sendable (Int32) -> Int32) async {
        _ = await withEngine { _ in self.acceptConnection = body }
    }

    /// accept(2) calls the loop made so far, read on the loop thread.
    func acceptCallCount() async -> Int? {
        return await withEngine { _ in self.acceptCalls }
    }

    /// Connections being served (sockets and rings), read on the loop thread.
    func connectionCount() async -> Int? {
        return await withEngine { _ in self.connections.count + self.ringByPort.count }
    }

    private func wake() {
        var one: UInt8 = 1
        _ = Glibc.write(wakeWrite, &one, 1)
    }

    // MARK: the loop

    private func run() {
        guard let epoll else { return }
        var ready = Epoll.Ready(capacity: 256)
        let eventsFD = events?.fileDescriptor.rawValue ?? -1
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let (stopping, tasks) = control.withLock { state in
                defer { state.tasks.removeAll() }
                return (state.stopping, state.tasks)
            }
            for t in tasks { t(engine); flushOutbox(producer: nil) }
            if stopping { break }

            // A ring may hold bytes no event announced (queued before we attached, or while
            // we were throttling it). Rings are one per guest domain, not per client.
            var hasWork = !runnable.isEmpty
            for c in Array(ringByPort.values) where canRun(c) {
                if case .ring(let ring, _, _) = c.transport, ring.readable > 0 { readRing(c) }
                if isLive(c) && c.decoder.bytesWanted == 0 && canRun(c) { hasWork = true }
            }
            var timeout: Int32 = hasWork ? 0 : -1
            if let until = listenersPausedUntil {
                let now = DispatchTime.now().uptimeNanoseconds
                let left = until > now ? Int32((until - now) / 1_000_000) + 1 : 0
                timeout = timeout < 0 ? left : min(timeout, left)
            }
            let n = epoll.wait(&ready, timeoutMs: timeout)
            if n < 0 && errno != EINTR {
                logger.error("epoll_wait failed: \(Sys.errnoText)")
                break
            }
            if let until = listenersPausedUntil, DispatchTime.now().uptimeNanoseconds >= until { resumeListeners() }
            for i in 0..<Int(max(n, 0)) {
                let (fd, revents) = ready[i]
                if fd == wakeRead {
                    var sink = [UInt8](repeating: 0, count: 64)
                    while Glibc.read(wakeRead, &sink, sink.count) > 0 {}
                } else if fd == eventsFD {
                    serviceRings()
                } else if let l = listeners.first(where: { $0.fd == fd }) {
                    acceptAll(l)
                } else if let c = connections[fd] {
                    service(c, revents, &buffer)
                }
            }
            // Connections whose back-pressure lifted may hold whole messages already read.
            while !runnable.isEmpty {
                let batch = runnable
                runnable.removeAll(keepingCapacity: true)
                for c in batch {
                    c.isRunnable = false
                    process(c)
                }
            }
        }
        for c in Array(connections.values) + Array(ringByPort.values) { drop(c, reason: nil) }
        events?.close()
        mapper?.close()
        for l in listeners {
            close(l.fd)
            unlink(l.path)
        }
        listeners = []
        epoll.close()
        close(wakeRead)
        close(wakeWrite)
    }

    /// One socket epoll reported ready.
    private func service(_ c: SocketConnection, _ revents: UInt32, _ buffer: inout [UInt8]) {
        if revents & Epoll.writable != 0 { flushOutput(c) }
        guard isLive(c) else { return }
        if revents & Epoll.readable != 0 && canRun(c) {
            let r = buffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if r == 0 {
                drop(c, reason: nil)
                return
            } else if r < 0 {
                if errno != EAGAIN && errno != EINTR {
                    drop(c, reason: "recv: \(Sys.errnoText)")
                    return
                }
            } else {
                c.decoder.append(buffer[0..<r])
            }
        } else if revents & UInt32(EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
            // Reported even when we do not ask for input: the peer is gone.
            drop(c, reason: nil)
            return
        }
        process(c)
    }

    /// Whether the loop may read and handle `c`'s requests now.
    private func canRun(_ c: SocketConnection) -> Bool {
        c.queuedReplies < quotas.outstandingRequests && c.blockedBy == nil
    }

    private func markRunnable(_ c: SocketConnection) {
        guard !c.isRunnable, isLive(c) else { return }
        c.isRunnable = true
        runnable.append(c)
    }

    /// Tells epoll what `c` waits for now: input unless held back, output while some is queued.
    private func updateInterest(_ c: SocketConnection) {
        guard case .socket(let fd) = c.transport, connections[fd] === c else { return }
        let want = (canRun(c) ? Epoll.readable : 0) | (c.output.isEmpty ? 0 : Epoll.writable)
        guard want != c.interest else { return }
        c.interest = want
        epoll?.watch(fd, want, modify: true)
    }

    private func add(_ c: SocketConnection) {
        connections[c.fd] = c
        byID[c.id] = c
        if let uid = c.uid { connectionsPerUID[uid, default: 0] += 1 }
        c.interest = Epoll.readable
        epoll?.watch(c.fd, c.interest)
    }

    private func acceptAll(_ listener: (fd: Int32, domain: DomainID, path: String)) {
        while true {
            acceptCalls += 1
            let fd = acceptConnection(listener.fd)
            if fd < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                    pauseListeners(because: String(cString: strerror(e)))
                } else if e != EAGAIN && e != EWOULDBLOCK {
                    warnThrottled("accept", "accept on \(listener.path): \(String(cString: strerror(e)))")
                }
                return
            }
            Sys.makeNonBlocking(fd)
            let peer = PeerCredentials.of(fd)
            // The socket's mode is the first gate; the kernel's word on who connected is the
            // one that decides, since a mode can be loosened (or a path reached) by mistake.
            if listener.domain == .dom0, !(peer.map(trusted.trusts) ?? false) {
                refuse(fd, "untrusted", "refused a connection on \(listener.path) from an untrusted peer (\(peer.map(\.description) ?? "no credentials"))")
                continue
            }
            if connections.count + ringByPort.count >= quotas.connections {
                refuse(fd, "total", "refused a connection on \(listener.path): \(quotas.connections) connections open, the quota")
                continue
            }
            if let uid = peer?.uid, connectionsPerUID[uid, default: 0] >= quotas.connectionsPerUser {
                refuse(fd, "user", "refused a connection on \(listener.path) from uid \(uid): \(quotas.connectionsPerUser) connections open, the per-user quota")
                continue
            }
            let id = engine.connect(domain: listener.domain)
            let c = SocketConnection(transport: .socket(fd), id: id, domain: listener.domain)
            c.uid = peer?.uid
            add(c)
            logger.debug("\(id) connected as \(listener.domain)", metadata: ["peer": "\(peer.map(\.description) ?? "-")"])
        }
    }

    private func refuse(_ fd: Int32, _ kind: String, _ message: String) {
        close(fd)
        warnThrottled("refused-" + kind, message)
    }

    private func warnThrottled(_ kind: String, _ message: String) {
        let (log, held) = logThrottle.admit(kind)
        guard log else { return }
        logger.warning("\(message)\(held > 0 ? " (and \(held) more like it since the last report)" : "")")
    }

    /// How long the listeners go unpolled after accept failed for want of descriptors
    /// (unless a connection closes first), in nanoseconds of `DispatchTime`.
    static let acceptPauseNanoseconds: UInt64 = 100_000_000

    /// Stops polling the listeners for a short while: accept cannot succeed until a
    /// descriptor frees, and a level-triggered listener would otherwise wake the loop forever.
    private func pauseListeners(because reason: String) {
        guard listenersPausedUntil == nil else { return }
        warnThrottled("accept-fd", "accept: \(reason); not accepting for \(Self.acceptPauseNanoseconds / 1_000_000) ms or until a connection closes")
        listenersPausedUntil = DispatchTime.now().uptimeNanoseconds + Self.acceptPauseNanoseconds
        for l in listeners { epoll?.watch(l.fd, 0, modify: true) }
    }

    private func resumeListeners() {
        guard listenersPausedUntil != nil else { return }
        listenersPausedUntil = nil
        for l in listeners { epoll?.watch(l.fd, Epoll.readable, modify: true) }
    }

    // MARK: rings

    /// Maps a guest's xenstore page and binds its event channel (what `XS_INTRODUCE` asks).
    /// In this world the page is named by the grant reference the guest gave dom0. A domain
    /// whose ring is served keeps it (introducing it again is a no-op, as before); one whose
    /// ring was cut off gets the page given now.
    private func attachRing(domain: DomainID, ringRef: GrantRef, remotePort: EventPort) throws(XenStoreError) {
        guard let events, let mapper else { throw XenStoreError(.notImplemented, "no hypervisor for rings") }
        guard ringByDomain[domain] == nil else { return }
        let mapping: GrantMapping
        do {
            mapping = try mapper.map(ringRef, from: domain, writable: true)
        } catch {
            throw XenStoreError(.invalid, "mapping \(domain)'s xenstore page: \(error)")
        }
        let port: EventPort
        do {
            port = try events.bindInterdomain(remote: domain, remotePort: remotePort)
        } catch {
            try? mapper.unmap(mapping)
            throw XenStoreError(.invalid, "binding \(domain)'s xenstore event channel: \(error)")
        }
        let ring = XenStoreDomainRing(page: mapping.memory.base, side: .daemon)
        ring.publishFeatures()
        let id = engine.connect(domain: domain)
        let c = SocketConnection(transport: .ring(ring, port: port, mapping: mapping), id: id, domain: domain)
        byID[id] = c
        ringByPort[port] = c
        ringByDomain[domain] = c
        logger.info("\(id) ring attached for \(domain)", metadata: ["port": "\(port)"])
        // Requests the guest queued before we attached are read by the loop (not here: we are
        // inside the engine, handling the introduce).
    }

    /// Drains every pending port: reads requests, writes queued replies.
    private func serviceRings() {
        guard let events else { return }
        while true {
            let port: EventPort?
            do { port = try events.pending() } catch {
                logger.error("event channel pending: \(error)")
                return
            }
            guard let port else { return }
            if let c = ringByPort[port] {
                flushOutput(c)
                if ringByPort[port] != nil { readRing(c) }
            }
            if ringByPort[port] != nil { try? events.unmask(port) }
        }
    }

    private func readRing(_ c: SocketConnection) {
        guard case .ring(let ring, let port, _) = c.transport else { return }
        var consumed = false
        while canRun(c) {
            // Never buffer past the message being assembled: the ring holds the rest.
            let chunk: [UInt8]
            do {
                chunk = try ring.read(upTo: min(XenStoreDomainRing.size, max(c.decoder.bytesWanted, 1)))
            } catch {
                ring.setError(UInt32(XENSTORE_ERROR_RINGIDX))
                drop(c, reason: error.message)
                return
            }
            if chunk.isEmpty { break }
            consumed = true
            c.decoder.append(chunk)
            process(c)
            guard ringByPort[port] != nil else { return }
        }
        // The guest may be waiting for room in its request ring.
        if consumed { try? events?.notify(port) }
    }

    /// Handles the complete messages buffered on `c`, up to the outstanding-request bound.
    private func process(_ c: SocketConnection) {
        defer { updateInterest(c) }
        while isLive(c) && canRun(c) {
            let message: XenStoreMessage?
            do {
                message = try c.decoder.next()
            } catch {
                if case .ring(let ring, _, _) = c.transport { ring.setError(UInt32(XENSTORE_ERROR_PROTO)) }
                drop(c, reason: error.message)
                return
            }
            guard let message else { return }
            engine.handle(message, from: c.id)
            flushOutbox(producer: c)
        }
    }

    private func isLive(_ c: SocketConnection) -> Bool {
        switch c.transport {
        case .socket(let fd): connections[fd] === c
        case .ring(_, let port, _): ringByPort[port] === c
        }
    }

    /// Queues the engine's replies and events; `producer` is the connection whose request
    /// caused them, held back if it overfills a dom0 watcher's queue.
    private func flushOutbox(producer: SocketConnection?) {
        let out = engine.takeOutbox()
        guard !out.isEmpty else { return }
        var touched: [SocketConnection] = []
        for o in out {
            guard let c = byID[o.connection] else { continue }
            if o.isWatchEvent {
                c.queuedEvents += 1
            } else {
                c.queuedReplies += 1
                peakQueuedReplies = max(peakQueuedReplies, c.queuedReplies)
            }
            c.output.append((o.message.encoded(), o.isWatchEvent))
            if touched.last !== c { touched.append(c) }
        }
        for c in touched where isLive(c) {
            if c.queuedEvents > quotas.queuedWatchEvents {
                guard c.domain == .dom0 else {
                    drop(c, reason: "\(c.queuedEvents) watch events unread; closing the connection")
                    continue
                }
                // dom0 runs the host: a guest's storm must not cost it its watches. The
                // producer waits instead (tasks of the process itself are not held back).
                if let producer, producer.blockedBy == nil, isLive(producer) {
                    producer.blockedBy = c
                    c.blocking.append(producer)
                    updateInterest(producer)
                    warnThrottled("storm", "\(producer.id) (\(producer.domain)) held back: \(c.id) has \(c.queuedEvents) watch events unread")
                }
            }
            flushOutput(c)
        }
    }

    /// Writes as much queued output as the socket or ring takes without blocking.
    private func flushOutput(_ c: SocketConnection) {
        var wrote = false
        let couldRun = canRun(c)
        defer {
            if wrote, case .ring(_, let port, _) = c.transport { try? events?.notify(port) }
            if isLive(c) {
                if !c.blocking.isEmpty && c.queuedEvents <= quotas.queuedWatchEvents / 2 { release(c) }
                if !couldRun && canRun(c) { markRunnable(c) }
                updateInterest(c)
            }
        }
        while let head = c.output.first {
            let n: Int
            switch c.transport {
            case .socket(let fd):
                n = head.bytes.withUnsafeBytes {
                    send(fd, $0.baseAddress! + c.headOffset, $0.count - c.headOffset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                }
                if n < 0 {
                    if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
                    drop(c, reason: "send: \(Sys.errnoText)")
                    return
                }
            case .ring(let ring, _, _):
                do {
                    n = try ring.write(head.bytes, from: c.headOffset)
                } catch {
                    ring.setError(UInt32(XENSTORE_ERROR_RINGIDX))
                    drop(c, reason: error.message)
                    return
                }
                if n == 0 { return }
                wrote = true
            }
            c.headOffset += n
            guard c.headOffset == head.bytes.count else { continue }
            c.output.removeFirst()
            c.headOffset = 0
            if head.isEvent { c.queuedEvents -= 1 } else { c.queuedReplies -= 1 }
        }
    }

    /// Lets the connections `watcher` held back run again.
    private func release(_ watcher: SocketConnection) {
        let held = watcher.blocking
        watcher.blocking = []
        for p in held where p.blockedBy === watcher {
            p.blockedBy = nil
            markRunnable(p)
            updateInterest(p)
        }
    }

    private func drop(_ c: SocketConnection, reason: String?) {
        switch c.transport {
        case .socket(let fd):
            guard connections.removeValue(forKey: fd) != nil else { return }
            epoll?.forget(fd)
            close(fd)
            if let uid = c.uid { connectionsPerUID[uid, default: 1] -= 1 }
            // A descriptor is free again: accept may succeed now.
            resumeListeners()
        case .ring(_, let port, let mapping):
            guard ringByPort.removeValue(forKey: port) != nil else { return }
            ringByDomain[c.domain] = nil
            try? events?.unbind(port)
            do { try mapper?.unmap(mapping) } catch { logger.warning("unmapping \(c.domain)'s page: \(error)") }
        }
        byID[c.id] = nil
        release(c)
        if let watcher = c.blockedBy { watcher.blocking.removeAll { $0 === c } }
        c.blockedBy = nil
        if let reason { logger.warning("\(c.id) closed: \(reason)") } else { logger.debug("\(c.id) disconnected") }
        engine.disconnect(c.id)
    }
}
