import XenLocks
import CXen
import DequeModule
import Dispatch
import Foundation
import Logging
import XenABI
import XenHypervisor

#if canImport(Glibc)
import Glibc
#endif

/// A xenstore daemon serving the `xs_wire.h` protocol on Unix stream sockets, embedded in a
/// process: one event-loop thread polls every non-blocking connection, so a slow, silent or
/// hostile client can only hurt itself.
///
/// Bounds per connection: a partial message holds at most one header plus
/// `XENSTORE_PAYLOAD_MAX` bytes; a header announcing more closes the connection; a client
/// with `outstandingRequests` unread replies is not read from until it reads them; a client
/// with more than `queuedWatchEvents` unread watch events is disconnected (XSA-349).
public final class XenStoreServer: @unchecked Sendable {
    // Fields below `loop` are touched only by the loop thread once started.
    private let listenersWanted: [(path: String, domain: DomainID)]
    private let logger: Logger
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
    private var connections: [Int32: SocketConnection] = [:]
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
    public init(
        socketPath: String, extraSockets: [(path: String, domain: DomainID)] = [],
        quotas: XenStoreQuotas = XenStoreQuotas(), logger: Logger = Logger(label: "xenstored"),
        hypervisor: (any Hypervisor)? = nil
    ) {
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
            engine.onIntroduce = { [unowned self] domain, ref, port throws(XenStoreError) in
                try self.attachRing(domain: domain, ringRef: GrantRef(UInt32(truncatingIfNeeded: ref)),
                                    remotePort: EventPort(UInt32(truncatingIfNeeded: port)))
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
        for (path, domain) in listenersWanted {
            do {
                let fd = try Sys.listen(at: path)
                listeners.append((fd, domain, path))
            } catch {
                for l in listeners { close(l.fd); unlink(l.path) }
                listeners = []
                close(wakeRead); close(wakeWrite)
                throw error
            }
        }
        let thread = Thread { [self] in
            self.run()
            self.finished.signal()
        }
        thread.name = "xenstored"
        control.withLock { $0.running = true }
        thread.start()
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
    /// Must not be called from the loop thread itself.
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
                connections[fd] = SocketConnection(transport: .socket(fd), id: id, domain: domain)
                logger.debug("\(id) adopted as \(domain)")
            }
            return true
        }
        if accepted { wake() } else { close(fd) }
        return accepted
    }

    /// The most replies ever queued for one connection, read on the loop thread.
    func peakQueuedReplyCount() -> Int? {
        nonisolated(unsafe) let me = self
        return withEngine { _ in me.peakQueuedReplies }
    }

    /// Connections being served (sockets and rings), read on the loop thread.
    func connectionCount() -> Int? {
        nonisolated(unsafe) let me = self
        return withEngine { _ in me.connections.count + me.ringByPort.count }
    }

    private func wake() {
        var one: UInt8 = 1
        _ = Glibc.write(wakeWrite, &one, 1)
    }

    // MARK: the loop

    private func run() {
        var pollfds: [pollfd] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let (stopping, tasks) = control.withLock { state in
                defer { state.tasks.removeAll() }
                return (state.stopping, state.tasks)
            }
            for t in tasks { t(engine); flushOutbox() }
            if stopping { break }

            pollfds.removeAll(keepingCapacity: true)
            pollfds.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            pollfds.append(pollfd(fd: events?.fileDescriptor.rawValue ?? -1, events: Int16(POLLIN), revents: 0))
            for l in listeners { pollfds.append(pollfd(fd: l.fd, events: Int16(POLLIN), revents: 0)) }
            var hasWork = false
            for (fd, c) in connections {
                var ev: Int16 = 0
                if c.queuedReplies < quotas.outstandingRequests {
                    ev |= Int16(POLLIN)
                    if c.decoder.bytesWanted == 0 { hasWork = true }
                }
                if !c.output.isEmpty { ev |= Int16(POLLOUT) }
                pollfds.append(pollfd(fd: fd, events: ev, revents: 0))
            }
            // A ring may hold bytes no event announced (queued before we attached, or while
            // we were throttling it).
            for c in Array(ringByPort.values) where c.queuedReplies < quotas.outstandingRequests {
                if case .ring(let ring, _, _) = c.transport, ring.readable > 0 { readRing(c) }
                if isLive(c) && c.decoder.bytesWanted == 0 && c.queuedReplies < quotas.outstandingRequests { hasWork = true }
            }
            let n = poll(&pollfds, nfds_t(pollfds.count), hasWork ? 0 : -1)
            if n < 0 && errno != EINTR {
                logger.error("poll failed: \(Sys.errnoText)")
                break
            }
            if pollfds[0].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wakeRead, &sink, sink.count) > 0 {}
            }
            if pollfds[1].revents != 0 { serviceRings() }
            let fixed = 2
            for i in fixed..<(fixed + listeners.count) where pollfds[i].revents & Int16(POLLIN) != 0 {
                acceptAll(listeners[i - fixed])
            }
            for p in pollfds.dropFirst(fixed + listeners.count) {
                guard let c = connections[p.fd] else { continue }
                if p.revents & Int16(POLLOUT) != 0 { flushOutput(c) }
                guard connections[p.fd] != nil else { continue }
                if p.revents & Int16(POLLIN) != 0 {
                    let r = buffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if r == 0 {
                        drop(c, reason: nil)
                        continue
                    } else if r < 0 {
                        if errno != EAGAIN && errno != EINTR { drop(c, reason: "recv: \(Sys.errnoText)") }
                    } else {
                        c.decoder.append(buffer[0..<r])
                    }
                } else if p.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                    drop(c, reason: nil)
                    continue
                }
                process(c)
            }
            // Connections whose back-pressure lifted may hold whole messages already read.
            for c in Array(connections.values) + Array(ringByPort.values)
            where c.queuedReplies < quotas.outstandingRequests && c.decoder.bytesWanted == 0 {
                process(c)
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
        close(wakeRead)
        close(wakeWrite)
    }

    private func acceptAll(_ listener: (fd: Int32, domain: DomainID, path: String)) {
        while true {
            let fd = accept(listener.fd, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { logger.warning("accept: \(Sys.errnoText)") }
                return
            }
            Sys.makeNonBlocking(fd)
            let id = engine.connect(domain: listener.domain)
            connections[fd] = SocketConnection(transport: .socket(fd), id: id, domain: listener.domain)
            logger.debug("\(id) connected as \(listener.domain)")
        }
    }

    // MARK: rings

    /// Maps a guest's xenstore page and binds its event channel (what `XS_INTRODUCE` asks).
    /// In this world the page is named by the grant reference the guest gave dom0.
    private func attachRing(domain: DomainID, ringRef: GrantRef, remotePort: EventPort) throws(XenStoreError) {
        guard let events, let mapper else { throw XenStoreError(.notImplemented, "no hypervisor for rings") }
        guard ringByDomain[domain] == nil else { throw XenStoreError(.exists, "\(domain) already has a ring") }
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
        while c.queuedReplies < quotas.outstandingRequests {
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
        while isLive(c) && c.queuedReplies < quotas.outstandingRequests {
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
            flushOutbox()
        }
    }

    private func isLive(_ c: SocketConnection) -> Bool {
        switch c.transport {
        case .socket(let fd): connections[fd] === c
        case .ring(_, let port, _): ringByPort[port] === c
        }
    }

    private func flushOutbox() {
        let out = engine.takeOutbox()
        guard !out.isEmpty else { return }
        var touched: [SocketConnection] = []
        var byID: [XenStoreEngine.ConnectionID: SocketConnection] = [:]
        for c in connections.values { byID[c.id] = c }
        for c in ringByPort.values { byID[c.id] = c }
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
                drop(c, reason: "\(c.queuedEvents) watch events unread; closing the connection")
                continue
            }
            flushOutput(c)
        }
    }

    /// Writes as much queued output as the socket or ring takes without blocking.
    private func flushOutput(_ c: SocketConnection) {
        var wrote = false
        defer {
            if wrote, case .ring(_, let port, _) = c.transport { try? events?.notify(port) }
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

    private func drop(_ c: SocketConnection, reason: String?) {
        switch c.transport {
        case .socket(let fd):
            guard connections.removeValue(forKey: fd) != nil else { return }
            close(fd)
        case .ring(_, let port, let mapping):
            guard ringByPort.removeValue(forKey: port) != nil else { return }
            ringByDomain[c.domain] = nil
            try? events?.unbind(port)
            do { try mapper?.unmap(mapping) } catch { logger.warning("unmapping \(c.domain)'s page: \(error)") }
        }
        if let reason { logger.warning("\(c.id) closed: \(reason)") } else { logger.debug("\(c.id) disconnected") }
        engine.disconnect(c.id)
    }
}
