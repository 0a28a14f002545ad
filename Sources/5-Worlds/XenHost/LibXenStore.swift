import CXen
import CXenLibs
import Foundation
import Glibc
import Synchronization
import XenABI
import XenLocks
import XenStore

/// The store through Xen's own libxenstore: what a process in a real Xen
/// domain uses (it reaches xenstored's socket in dom0, /dev/xen/xenbus in a
/// domU, or whatever `XENSTORED_PATH` names). It offers the same operations
/// as `XenStoreClient`, so the feature-key helpers work on it unchanged.
public final class LibXenStore: XenStoreOperations, @unchecked Sendable {
    // @unchecked: every use of `handle` runs on `calls`, a serial queue, and
    // close() runs there too, so no call can outlive the handle.
    private let lib: LibXen
    private let handle: LibXen.Store.Handle
    private let transactionID: UInt32
    /// libxenstore blocks on round trips to the daemon: its calls run on this
    /// queue, never on Swift's cooperative threads, which they would starve.
    private let calls: DispatchQueue
    private let owner: Bool
    private let watches = Mutex<[String: AsyncStream<XenStoreWatchEvent>.Continuation]>([:])
    private let nextToken = Mutex<Int>(0)
    /// Set on `calls` by close(); read there before every use of the handle.
    nonisolated(unsafe) private var closed = false

    /// Opens a connection (`xs_open`).
    public init(library: LibXen = .system) throws(XenStoreError) {
        guard let handle = library.store.open() else { throw Self.failure(library, "xs_open") }
        self.lib = library
        self.handle = handle
        self.transactionID = 0
        self.calls = DispatchQueue(label: "libxenstore")
        self.owner = true
    }

    /// A view of `parent`'s connection inside transaction `transaction`.
    private init(parent: LibXenStore, transaction: UInt32) {
        self.lib = parent.lib
        self.handle = parent.handle
        self.transactionID = transaction
        self.calls = parent.calls
        self.owner = false
    }

    deinit { close() }

    /// Closes the connection (`xs_close`) once calls in flight are done; watches end.
    public func close() {
        guard owner else { return }
        let wasOpen: Bool = calls.sync {
            guard !closed else { return false }
            closed = true
            lib.store.close(handle)
            return true
        }
        if wasOpen { for (_, c) in watches.withLock({ $0 }) { c.finish() } }
    }

    /// Runs `body` with the handle on the call queue; `.closed` once closed.
    private func call<T: Sendable>(_ body: @escaping @Sendable (LibXen.Store.Handle) throws(XenStoreError) -> T) async throws(XenStoreError) -> T {
        let result: Result<T, XenStoreError> = await withCheckedContinuation { continuation in
            calls.async { [self] in
                guard !closed else {
                    continuation.resume(returning: .failure(XenStoreError(.init(rawValue: "ECLOSED"), "libxenstore connection closed")))
                    return
                }
                do throws(XenStoreError) { continuation.resume(returning: .success(try body(handle))) } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    // MARK: requests

    /// Performs one store request through the matching `xs_*` call on the library's own queue (read, write, directory, mkdir, rm, permissions, domain path). Throws the call's errno as a `XenStoreError` (`ENOENT`, `EACCES`, ...), `.notImplemented` for a type libxenstore does not offer this way, and `ECLOSED` after ``close()``.
    public func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        try await call { [self] (handle) throws(XenStoreError) -> XenStoreMessage in try perform(type, payload, handle) }
    }

    /// One request, on the call queue.
    private func perform(_ type: XenStoreMessageType, _ payload: [UInt8], _ handle: LibXen.Store.Handle) throws(XenStoreError) -> XenStoreMessage {
        let parts = payload.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(decoding: parts.first ?? [], as: UTF8.self)
        let t = transactionID
        switch type {
        case .read:
            var length: UInt32 = 0
            guard let data = lib.store.read(handle, t, path, &length) else { throw Self.failure(lib, "xs_read \(path)") }
            defer { lib.store.free(data) }
            return reply(type, Array(UnsafeRawBufferPointer(start: data, count: Int(length))))
        case .write:
            let value = parts.count > 1 ? Array(parts[1]) : []
            let ok = value.withUnsafeBytes { lib.store.write(handle, t, path, $0) }
            return try acknowledge(type, ok, "xs_write \(path)")
        case .directory:
            var count: UInt32 = 0
            guard let names = lib.store.directory(handle, t, path, &count) else {
                throw Self.failure(lib, "xs_directory \(path)")
            }
            defer { lib.store.free(names) }
            var out: [UInt8] = []
            for i in 0 ..< Int(count) { if let n = names[i] { out += Array(String(cString: n).utf8) + [0] } }
            return reply(type, out)
        case .mkdir:
            return try acknowledge(type, lib.store.mkdir(handle, t, path), "xs_mkdir \(path)")
        case .rm:
            return try acknowledge(type, lib.store.rm(handle, t, path), "xs_rm \(path)")
        case .getPermissions:
            var count: UInt32 = 0
            guard let perms = lib.store.getPermissions(handle, t, path, &count) else {
                throw Self.failure(lib, "xs_get_permissions \(path)")
            }
            defer { lib.store.free(perms) }
            let strings = (0 ..< Int(count)).map { Self.permissionString(perms[$0]) }
            return XenStoreMessage(type: type, strings: strings)
        case .setPermissions:
            let strings = payload.split(separator: 0).dropFirst().map { String(decoding: $0, as: UTF8.self) }
            var perms = try strings.map { (s) throws(XenStoreError) -> xs_permissions in try Self.permission(s) }
            let ok = !perms.isEmpty
                && perms.withUnsafeMutableBufferPointer({ lib.store.setPermissions(handle, t, path, $0.baseAddress!, UInt32($0.count)) })
            return try acknowledge(type, ok, "xs_set_permissions \(path)")
        case .getDomainPath:
            guard let domain = UInt32(path), let p = lib.store.getDomainPath(handle, domain) else {
                throw Self.failure(lib, "xs_get_domain_path \(path)")
            }
            defer { lib.store.free(p) }
            return XenStoreMessage(type: type, strings: [String(cString: p)])
        default:
            throw XenStoreError(.notImplemented, "\(type) is not offered through libxenstore")
        }
    }

    private func reply(_ type: XenStoreMessageType, _ payload: [UInt8]) -> XenStoreMessage {
        XenStoreMessage(type: type, transactionID: transactionID, payload: payload)
    }

    /// The `OK` reply to a call that answers only success or failure, or the library's
    /// error for `call` when it failed.
    private func acknowledge(_ type: XenStoreMessageType, _ ok: Bool, _ call: @autoclosure () -> String) throws(XenStoreError) -> XenStoreMessage {
        guard ok else { throw Self.failure(lib, call()) }
        return reply(type, Array("OK\0".utf8))
    }

    // MARK: transactions

    /// Runs `body` in a transaction (`xs_transaction_start`/`_end`) and
    /// commits; on `EAGAIN` (a conflicting commit) runs it again, at most
    /// `maxAttempts` times. Any other error aborts it.
    public func transaction<T: Sendable>(maxAttempts: Int = 32, _ body: (LibXenStore) async throws -> T) async throws -> T {
        for _ in 0 ..< maxAttempts {
            let lib = self.lib
            let t = try await call { (handle) throws(XenStoreError) -> UInt32 in
                let t = lib.store.transactionStart(handle)
                guard t != 0 else { throw Self.failure(lib, "xs_transaction_start") }
                return t
            }
            let view = LibXenStore(parent: self, transaction: t)
            let result: T
            do {
                result = try await body(view)
            } catch {
                _ = try? await call { handle in lib.store.transactionEnd(handle, t, true) }
                if let e = error as? XenStoreError, e.code == .again { continue }
                throw error
            }
            let failure: XenStoreError? = try await call { handle in
                lib.store.transactionEnd(handle, t, false) ? nil : Self.failure(lib, "xs_transaction_end")
            }
            guard let failure else { return result }
            if failure.code != .again { throw failure }
        }
        throw XenStoreError(.again, "transaction conflicted \(maxAttempts) times")
    }

    // MARK: watches

    /// Watches `path` and its subtree (`xs_watch`); the first event comes at
    /// once, as Xen fires a new watch. A thread waits on `xs_fileno` and
    /// takes events with `xs_check_watch`. Ending the iteration unwatches.
    public func watch(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        let token = "libxs-\(nextToken.withLock { $0 += 1; return $0 })"
        let (stream, continuation) = AsyncStream.makeStream(of: XenStoreWatchEvent.self, bufferingPolicy: .bufferingNewest(1024))
        let first = watches.withLock { w -> Bool in
            w[token] = continuation
            return w.count == 1
        }
        let lib = self.lib
        do {
            try await call { (handle) throws(XenStoreError) in
                guard lib.store.watch(handle, path, token) else { throw Self.failure(lib, "xs_watch \(path)") }
            }
        } catch {
            _ = watches.withLock { $0.removeValue(forKey: token) }
            throw error
        }
        continuation.onTermination = { [weak self] _ in
            guard let self, self.watches.withLock({ $0.removeValue(forKey: token) }) != nil else { return }
            self.calls.async { if !self.closed { _ = lib.store.unwatch(self.handle, path, token) } }
        }
        if first { startWatchThread() }
        return stream
    }

    private func startWatchThread() {
        let fd: Int32 = calls.sync { closed ? -1 : lib.store.fileno(handle) }
        guard fd >= 0 else { return }
        startDetachedThread(named: "libxs-watches") { [weak self] in
            while let self, !self.watches.withLock({ $0.isEmpty }) {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 200) > 0 else { continue }
                // Taken on the call queue, so never after close().
                let events: [XenStoreWatchEvent]? = self.calls.sync {
                    guard !self.closed else { return nil }
                    var taken: [XenStoreWatchEvent] = []
                    while let event = self.lib.store.checkWatch(self.handle) {
                        let path = event[Int(XS_WATCH_PATH.rawValue)].map { String(cString: $0) } ?? ""
                        let token = event[Int(XS_WATCH_TOKEN.rawValue)].map { String(cString: $0) } ?? ""
                        self.lib.store.free(event)
                        taken.append(XenStoreWatchEvent(path: path, token: token))
                    }
                    return taken
                }
                guard let events else { return }
                for e in events { _ = self.watches.withLock { $0[e.token] }?.yield(e) }
            }
        }
    }

    // MARK: conversions

    /// libxenstore's permission bits as Xen's string form (`n0`, `r1`, `w2`, `b3`).
    static func permissionString(_ p: xs_permissions) -> String {
        let rw = p.perms & UInt32(XS_PERM_READ | XS_PERM_WRITE)
        let letter = rw == UInt32(XS_PERM_READ | XS_PERM_WRITE) ? "b" : rw == UInt32(XS_PERM_READ) ? "r" : rw == UInt32(XS_PERM_WRITE) ? "w" : "n"
        return letter + String(p.id)
    }

    static func permission(_ s: String) throws(XenStoreError) -> xs_permissions {
        guard let first = s.first, let id = UInt32(s.dropFirst()) else {
            throw XenStoreError(.invalid, "bad permission \(s.prefix(16))")
        }
        let bits: Int32 = switch first {
        case "n": XS_PERM_NONE
        case "r": XS_PERM_READ
        case "w": XS_PERM_WRITE
        case "b": XS_PERM_READ | XS_PERM_WRITE
        default: -1
        }
        guard bits >= 0 else { throw XenStoreError(.invalid, "bad permission \(s.prefix(16))") }
        return xs_permissions(id: id, perms: UInt32(bits))
    }

    /// The errno of the call that just failed, as the store's error name.
    static func failure(_ lib: LibXen, _ call: String) -> XenStoreError {
        let code = lib.errno()
        let names: [Int32: String] = [
            EINVAL: "EINVAL", EACCES: "EACCES", EEXIST: "EEXIST", EISDIR: "EISDIR", ENOENT: "ENOENT",
            ENOMEM: "ENOMEM", ENOSPC: "ENOSPC", EIO: "EIO", ENOTEMPTY: "ENOTEMPTY", ENOSYS: "ENOSYS",
            EROFS: "EROFS", EBUSY: "EBUSY", EAGAIN: "EAGAIN", EISCONN: "EISCONN", E2BIG: "E2BIG", EPERM: "EPERM",
        ]
        let name = names[code] ?? "E\(code)"
        return XenStoreError(.init(rawValue: name), "\(call) failed: \(String(cString: strerror(code)))")
    }
}

extension LibXenStore: XenStoreConnection {
    /// Watches `path` and its children (`xs_watch`), as ``watch(_:)`` does.
    public func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        try await watch(path)
    }

    /// Runs `body` in a transaction retried on conflict, as ``transaction(maxAttempts:_:)`` does.
    public func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await transaction { tx in try await body(tx) }
    }
}
