import DequeModule
import Dispatch
import Foundation
import Logging
import Synchronization
import XenABI

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
    private let control = Mutex(Control())
    private let finished = DispatchSemaphore(value: 0)
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private var listeners: [(fd: Int32, domain: DomainID, path: String)] = []
    private var connections: [Int32: SocketConnection] = [:]

    private final class SocketConnection {
        let fd: Int32
        let id: XenStoreEngine.ConnectionID
        var decoder = XenStoreFrameDecoder()
        var output: Deque<(bytes: [UInt8], isEvent: Bool)> = []
        var headOffset = 0
        var queuedEvents = 0
        var queuedReplies = 0
        init(fd: Int32, id: XenStoreEngine.ConnectionID) {
            self.fd = fd
            self.id = id
        }
    }

    /// A server on `socketPath` whose clients speak for dom0 (as xenstored's socket does).
    /// `extraSockets` adds sockets whose clients speak for a guest domain: tests use them to
    /// act as a domU without a ring.
    public init(
        socketPath: String, extraSockets: [(path: String, domain: DomainID)] = [],
        quotas: XenStoreQuotas = XenStoreQuotas(), logger: Logger = Logger(label: "xenstored")
    ) {
        self.listenersWanted = [(socketPath, .dom0)] + extraSockets
        self.logger = logger
        self.quotas = quotas
        self.engine = XenStoreEngine(quotas: quotas, logger: logger)
    }

    /// Binds the sockets and starts the event-loop thread.
    public func start() throws(XenStoreError) {
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
    /// and waits for it. Must not be called from the loop thread itself.
    public func withEngine<R: Sendable>(_ body: @escaping @Sendable (XenStoreEngine) -> R) -> R? {
        let box = Mutex<R?>(nil)
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
        done.wait()
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
                connections[fd] = SocketConnection(fd: fd, id: id)
                logger.debug("\(id) adopted as \(domain)")
            }
            return true
        }
        if accepted { wake() } else { close(fd) }
        return accepted
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
            for l in listeners { pollfds.append(pollfd(fd: l.fd, events: Int16(POLLIN), revents: 0)) }
            var hasWork = false
            for (fd, c) in connections {
                var events: Int16 = 0
                if c.queuedReplies < quotas.outstandingRequests {
                    events |= Int16(POLLIN)
                    if c.decoder.bytesWanted == 0 { hasWork = true }
                }
                if !c.output.isEmpty { events |= Int16(POLLOUT) }
                pollfds.append(pollfd(fd: fd, events: events, revents: 0))
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
            for i in 1..<(1 + listeners.count) where pollfds[i].revents & Int16(POLLIN) != 0 {
                acceptAll(listeners[i - 1])
            }
            for p in pollfds.dropFirst(1 + listeners.count) {
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
            for c in connections.values where c.queuedReplies < quotas.outstandingRequests && c.decoder.bytesWanted == 0 {
                process(c)
            }
        }
        for c in Array(connections.values) { drop(c, reason: nil) }
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
            connections[fd] = SocketConnection(fd: fd, id: id)
            logger.debug("\(id) connected as \(listener.domain)")
        }
    }

    /// Handles the complete messages buffered on `c`, up to the outstanding-request bound.
    private func process(_ c: SocketConnection) {
        while connections[c.fd] != nil && c.queuedReplies < quotas.outstandingRequests {
            let message: XenStoreMessage?
            do {
                message = try c.decoder.next()
            } catch {
                drop(c, reason: error.message)
                return
            }
            guard let message else { return }
            engine.handle(message, from: c.id)
            flushOutbox()
        }
    }

    private func flushOutbox() {
        let out = engine.takeOutbox()
        guard !out.isEmpty else { return }
        var touched: [SocketConnection] = []
        let byID = Dictionary(uniqueKeysWithValues: connections.values.map { ($0.id, $0) })
        for o in out {
            guard let c = byID[o.connection] else { continue }
            if o.isWatchEvent {
                c.queuedEvents += 1
            } else {
                c.queuedReplies += 1
            }
            c.output.append((o.message.encoded(), o.isWatchEvent))
            if touched.last !== c { touched.append(c) }
        }
        for c in touched where connections[c.fd] != nil {
            if c.queuedEvents > quotas.queuedWatchEvents {
                drop(c, reason: "\(c.queuedEvents) watch events unread; closing the connection")
                continue
            }
            flushOutput(c)
        }
    }

    /// Writes as much queued output as the socket takes without blocking.
    private func flushOutput(_ c: SocketConnection) {
        while let head = c.output.first {
            let n = head.bytes.withUnsafeBytes {
                send(c.fd, $0.baseAddress! + c.headOffset, $0.count - c.headOffset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
                drop(c, reason: "send: \(Sys.errnoText)")
                return
            }
            c.headOffset += n
            guard c.headOffset == head.bytes.count else { continue }
            c.output.removeFirst()
            c.headOffset = 0
            if head.isEvent { c.queuedEvents -= 1 } else { c.queuedReplies -= 1 }
        }
    }

    private func drop(_ c: SocketConnection, reason: String?) {
        guard connections.removeValue(forKey: c.fd) != nil else { return }
        if let reason { logger.warning("\(c.id) closed: \(reason)") } else { logger.debug("\(c.id) disconnected") }
        engine.disconnect(c.id)
        close(c.fd)
    }
}
