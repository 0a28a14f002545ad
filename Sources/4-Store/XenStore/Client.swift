import XenLocks
import Foundation
import XenABI

/// One watch event: the path that changed (relative if the watch was) and the watch's token.
public struct XenStoreWatchEvent: Hashable, Sendable {
    /// The path that changed (or `@introduceDomain` / `@releaseDomain`): the first string of an
    /// `XS_WATCH_EVENT` payload. Relative to the domain's home when the watch was set relative.
    public var path: String
    /// The token given to `XS_WATCH`, echoed as the event's second string, which tells the
    /// client which watch fired.
    public var token: String

    /// An event for `path` on the watch registered with `token`.
    public init(path: String, token: String) {
        self.path = path
        self.token = token
    }
}

/// The operations a client offers, outside or inside a transaction.
public protocol XenStoreOperations: Sendable {
    /// Sends one request and returns its reply; an `XS_ERROR` reply is thrown.
    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage
}

extension XenStoreOperations {
    private func request(_ type: XenStoreMessageType, _ strings: String...) async throws(XenStoreError) -> XenStoreMessage {
        try await request(type, payload: XenStoreMessage(type: type, strings: strings).payload)
    }

    /// `XS_READ`: the value as text.
    public func read(_ path: String) async throws(XenStoreError) -> String {
        try await request(.read, path).text
    }
    /// `XS_READ`: the value's bytes.
    public func readBytes(_ path: String) async throws(XenStoreError) -> [UInt8] {
        try await request(.read, path).payload
    }
    /// The value, or nil when the node does not exist.
    public func readIfPresent(_ path: String) async throws(XenStoreError) -> String? {
        do { return try await read(path) } catch {
            if error.code == .noEntry { return nil }
            throw error
        }
    }
    /// `XS_WRITE`, creating missing parents.
    public func write(_ path: String, _ value: String) async throws(XenStoreError) {
        try await write(path, bytes: Array(value.utf8))
    }
    /// `XS_WRITE` of raw bytes.
    public func write(_ path: String, bytes: [UInt8]) async throws(XenStoreError) {
        _ = try await request(.write, payload: Array(path.utf8) + [0] + bytes)
    }
    /// `XS_MKDIR`: creates the node (empty) if it is missing.
    public func mkdir(_ path: String) async throws(XenStoreError) { _ = try await request(.mkdir, path) }
    /// `XS_RM`: removes the node and everything below it.
    public func rm(_ path: String) async throws(XenStoreError) { _ = try await request(.rm, path) }
    /// `XS_DIRECTORY`, falling back to `XS_DIRECTORY_PART` for listings over one message.
    public func directory(_ path: String) async throws(XenStoreError) -> [String] {
        let reply: XenStoreMessage
        do {
            reply = try await request(.directory, path)
        } catch {
            if error.code == .tooBig { return try await directoryInParts(path) }
            throw error
        }
        return reply.nulSeparatedParts().terminated.map { String(decoding: $0, as: UTF8.self) }
    }
    private func directoryInParts(_ path: String) async throws(XenStoreError) -> [String] {
        for _ in 0..<8 {
            var all: [UInt8] = []
            var generation: [UInt8]?
            while true {
                let reply = try await request(.directoryPart, String(path), String(all.count)).payload
                guard let nul = reply.firstIndex(of: 0) else {
                    throw XenStoreError(.protocolViolation, "DIRECTORY_PART reply without generation")
                }
                let gen = Array(reply[..<nul])
                if generation == nil { generation = gen } else if generation != gen { break }
                let data = reply[(nul + 1)...]
                // Names are never empty, so an empty name (a doubled NUL) marks the last part.
                if data.elementsEqual([0]) || data.suffix(2).elementsEqual([0, 0]) {
                    all += data.dropLast()
                    return all.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                }
                guard !data.isEmpty else { throw XenStoreError(.protocolViolation, "empty DIRECTORY_PART reply") }
                all += data
            }
        }
        throw XenStoreError(.again, "directory kept changing while read in parts")
    }
    /// `XS_READ` as a test: true when the node exists, false on `ENOENT`. A node the caller
    /// may not read throws `EACCES` rather than answering false.
    public func exists(_ path: String) async throws(XenStoreError) -> Bool {
        do { _ = try await request(.read, path) } catch {
            if error.code == .noEntry { return false }
            throw error
        }
        return true
    }
    /// `XS_GET_PERMS`
    public func permissions(_ path: String) async throws(XenStoreError) -> XenStorePermissions {
        let strings = try await request(.getPermissions, path).nulSeparatedParts().terminated.map {
            String(decoding: $0, as: UTF8.self)
        }
        guard let perms = XenStorePermissions(strings: strings) else {
            throw XenStoreError(.protocolViolation, "malformed permissions reply")
        }
        return perms
    }
    /// `XS_SET_PERMS`
    public func setPermissions(_ path: String, _ perms: XenStorePermissions) async throws(XenStoreError) {
        _ = try await request(.setPermissions, payload: XenStoreMessage(type: .setPermissions, strings: [path] + perms.strings).payload)
    }
    /// `XS_GET_DOMAIN_PATH`
    public func domainPath(_ domain: DomainID) async throws(XenStoreError) -> String {
        try await request(.getDomainPath, String(domain.rawValue)).text
    }
}

/// A xenstore client: requests are matched to replies by `req_id`, watch events go to their
/// watch's `AsyncSequence`. One reader thread per client; any task may call it.
public final class XenStoreClient: XenStoreOperations {
    private let transport: any XenStoreTransport

    /// What the reader thread shares with the callers. Its lock is only ever held for a few
    /// map operations, never across I/O: the reader must always be able to deliver a reply,
    /// since the daemon stops reading requests from a client whose replies pile up unread.
    private struct State {
        var nextToken = 1
        var pending: [UInt32: CheckedContinuation<XenStoreMessage, any Error>] = [:]
        var watches: [String: AsyncStream<XenStoreWatchEvent>.Continuation] = [:]
        var closed: XenStoreError?
    }
    private let state = Locked(State())
    /// The next `req_id`, behind the lock that serialises sends: held across
    /// `transport.send` (which may wait for room), so requests leave in the order their ids
    /// were taken and the transport has one sender at a time. Taken before `state`'s lock,
    /// never after it, and never by the reader.
    private let sending = Locked<UInt32>(1)

    /// Connects to a server's Unix socket.
    public convenience init(socketPath: String) throws(XenStoreError) {
        try self.init(transport: XenStoreSocketTransport(socketPath: socketPath))
    }

    /// A client over any transport; starts its reader thread.
    public init(transport: any XenStoreTransport) {
        self.transport = transport
        // The reader holds the transport and state, not the client, so dropping the client
        // shuts the transport down and ends the thread.
        let state = self.state
        startDetachedThread(named: "xenstore-client") { Self.readLoop(transport, state) }
    }

    /// Closes the connection; pending and later requests fail with `closed`. Dropping the
    /// client does the same.
    public func close() {
        transport.shutdown()
    }

    deinit { transport.shutdown() }

    private static func readLoop(_ transport: any XenStoreTransport, _ state: Locked<State>) {
        var decoder = XenStoreFrameDecoder()
        var buffer = [UInt8](repeating: 0, count: 8192)
        var failure = XenStoreError(.closed, "connection closed")
        reading: while true {
            let n: Int
            do {
                n = try buffer.withUnsafeMutableBytes { b in try transport.receive(into: b) }
            } catch {
                failure = error as? XenStoreError ?? XenStoreError(.closed, "\(error)")
                break
            }
            if n == 0 { break }
            decoder.append(buffer[0..<n])
            while true {
                let m: XenStoreMessage?
                do { m = try decoder.next() } catch {
                    failure = error
                    transport.shutdown()
                    break reading
                }
                guard let m else { break }
                deliver(m, state)
            }
        }
        let (pending, watches) = state.withLock { s in
            s.closed = failure
            defer { s.pending = [:]; s.watches = [:] }
            return (s.pending, s.watches)
        }
        for c in pending.values { c.resume(throwing: failure) }
        for w in watches.values { w.finish() }
    }

    private static func deliver(_ m: XenStoreMessage, _ state: Locked<State>) {
        if m.type == .watchEvent {
            let parts = m.nulSeparatedParts().terminated
            guard parts.count >= 2 else { return }
            let event = XenStoreWatchEvent(
                path: String(decoding: parts[0], as: UTF8.self), token: String(decoding: parts[1], as: UTF8.self))
            let c = state.withLock { $0.watches[event.token] }
            c?.yield(event)
            return
        }
        let waiter = state.withLock { $0.pending.removeValue(forKey: m.requestID) }
        waiter?.resume(returning: m)
    }

    /// Sends one request outside any transaction (`tx_id` 0) and waits for its reply.
    ///
    /// The payload is sent as given. Throws `E2BIG` for a payload over `XENSTORE_PAYLOAD_MAX`
    /// (before anything is sent), the daemon's code for an `XS_ERROR` reply, `EPROTO` for a
    /// reply of another type, and the connection's failure (`ECONNRESET` once it is closed).
    public func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        try await request(type, payload: payload, transaction: 0)
    }

    func request(_ type: XenStoreMessageType, payload: [UInt8], transaction: UInt32) async throws(XenStoreError) -> XenStoreMessage {
        guard payload.count <= XenStoreLimits.payloadMax else {
            throw XenStoreError(.tooBig, "payload over XENSTORE_PAYLOAD_MAX")
        }
        let reply: XenStoreMessage
        do {
            reply = try await withCheckedThrowingContinuation { (k: CheckedContinuation<XenStoreMessage, any Error>) in
                let failed: XenStoreError? = sending.withLock { nextRequest in
                    let id = nextRequest
                    // Registered before it is sent, so the reply always finds its waiter.
                    let closed: XenStoreError? = state.withLock { s in
                        if let closed = s.closed { return closed }
                        s.pending[id] = k
                        return nil
                    }
                    if let closed { return closed }
                    nextRequest &+= 1
                    let bytes = XenStoreMessage(type: type, requestID: id, transactionID: transaction, payload: payload).encoded()
                    // Only the send lock is held here: the reader keeps delivering replies
                    // (and so keeps the daemon reading) while this waits for room.
                    do throws(XenStoreError) { try transport.send(bytes) } catch {
                        // The reader may have failed every waiter already (the connection
                        // closed under us); then this one was resumed and must not be again.
                        let stillMine = state.withLock { $0.pending.removeValue(forKey: id) != nil }
                        return stillMine ? error : nil
                    }
                    return nil
                }
                if let failed { k.resume(throwing: failed) }
            }
        } catch let e as XenStoreError {
            throw e
        } catch {
            throw XenStoreError(.system, "\(error)")
        }
        if reply.type == .error { throw XenStoreError(XenStoreError.Code(rawValue: reply.text), "\(type) failed") }
        guard reply.type == type else {
            throw XenStoreError(.protocolViolation, "reply of type \(reply.type) to \(type)")
        }
        return reply
    }

    // MARK: watches

    /// Sets a watch on `path` and its subtree. The first event arrives at once (Xen fires a
    /// new watch once). Ending the iteration, or dropping the sequence, removes the watch.
    /// At most `bufferLimit` events wait unread; older ones are dropped first (a watcher
    /// re-reads the state anyway).
    public func watch(_ path: String, bufferLimit: Int = 1024) async throws(XenStoreError) -> XenStoreWatch {
        let token = state.withLock { s in
            defer { s.nextToken += 1 }
            return "swift-\(s.nextToken)"
        }
        let (stream, continuation) = AsyncStream.makeStream(
            of: XenStoreWatchEvent.self, bufferingPolicy: .bufferingNewest(bufferLimit))
        state.withLock { $0.watches[token] = continuation }
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            let live = self.state.withLock { $0.watches.removeValue(forKey: token) != nil && $0.closed == nil }
            if live { Task { _ = try? await self.request(.unwatch, payload: XenStoreMessage(type: .unwatch, strings: [path, token]).payload) } }
        }
        do {
            _ = try await request(.watch, payload: XenStoreMessage(type: .watch, strings: [path, token]).payload)
        } catch {
            state.withLock { _ = $0.watches.removeValue(forKey: token) }
            continuation.finish()
            throw error
        }
        return XenStoreWatch(path: path, token: token, stream: stream, continuation: continuation)
    }

    // MARK: transactions

    /// Runs `body` in a transaction and commits it; when the commit (or any step) answers
    /// `EAGAIN`, runs it again from the start, at most `maxAttempts` times. Any other error
    /// aborts the transaction and is rethrown.
    public func transaction<T: Sendable>(
        maxAttempts: Int = 32, _ body: (XenStoreTransaction) async throws -> T
    ) async throws -> T {
        for _ in 0..<maxAttempts {
            let id = try await request(.transactionStart, payload: [0])
            guard let txid = UInt32(id.text), txid != 0 else {
                throw XenStoreError(.protocolViolation, "bad transaction id \(id.text.prefix(16))")
            }
            let tx = XenStoreTransaction(client: self, id: txid)
            let result: T
            do {
                result = try await body(tx)
            } catch let e as XenStoreError where e.code == .again {
                _ = try? await request(.transactionEnd, payload: Array("F\0".utf8), transaction: txid)
                continue
            } catch {
                _ = try? await request(.transactionEnd, payload: Array("F\0".utf8), transaction: txid)
                throw error
            }
            do {
                _ = try await request(.transactionEnd, payload: Array("T\0".utf8), transaction: txid)
            } catch {
                if error.code == .again { continue }
                throw error
            }
            return result
        }
        throw XenStoreError(.again, "transaction conflicted \(maxAttempts) times")
    }
}

/// An open transaction: the same operations, seen and applied atomically at commit.
public struct XenStoreTransaction: XenStoreOperations {
    let client: XenStoreClient
    /// The `tx_id` the daemon gave.
    public let id: UInt32

    /// Sends one request tagged with this transaction's `tx_id` and waits for its reply;
    /// throws as ``XenStoreClient/request(_:payload:)`` does. Inside a transaction the daemon
    /// may also answer `ENOSPC` once it touches too many nodes, and `ENOENT` after it ended.
    public func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        try await client.request(type, payload: payload, transaction: id)
    }
}

/// The events of one watch, as an `AsyncSequence`.
public struct XenStoreWatch: AsyncSequence, Sendable {
    /// Each event the daemon sends for this watch.
    public typealias Element = XenStoreWatchEvent
    /// The path as given to ``XenStoreClient/watch(_:bufferLimit:)`` (relative paths stay relative).
    public let path: String
    /// The token the client chose for `XS_WATCH` (unique per client), which routes events here.
    public let token: String
    let stream: AsyncStream<XenStoreWatchEvent>
    let continuation: AsyncStream<XenStoreWatchEvent>.Continuation

    /// An iterator over the watch's events; the sequence ends when the watch is cancelled or
    /// the connection closes. Iterate from one task only.
    public func makeAsyncIterator() -> AsyncStream<XenStoreWatchEvent>.Iterator { stream.makeAsyncIterator() }

    /// Removes the watch and ends the sequence.
    public func cancel() { continuation.finish() }
}
