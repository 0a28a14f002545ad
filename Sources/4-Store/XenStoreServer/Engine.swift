import Logging
import XenABI
import XenStore

/// The store and its request semantics, independent of any transport.
///
/// Not thread-safe by design: the server's single event-loop thread owns it. A transport
/// registers each connection with the domain it speaks for, passes every decoded request
/// to `handle(_:from:)`, and sends whatever `takeOutbox()` returns (replies and watch
/// events, in order). Semantics follow Xen's xenstored: homes under `/local/domain/<id>`,
/// implicit parents, Xen permissions, watches that fire once when set, transactions that
/// fail with `EAGAIN` on conflict, per-domain quotas.
public final class XenStoreEngine {
    /// A connection registered with the engine.
    public struct ConnectionID: Hashable, Sendable, Comparable, CustomStringConvertible {
        /// The number ``XenStoreEngine/connect(domain:)`` gave, counting up from 1 and never reused.
        public let rawValue: Int
        /// Orders connections by registration, the order watch events are queued in.
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
        /// `conn` and the number (`conn3`), for logs.
        public var description: String { "conn\(rawValue)" }
    }

    /// What a message addressed to a connection is, so transports can bound watch events.
    public struct Outgoing: Sendable {
        /// The connection to send `message` on.
        public var connection: ConnectionID
        /// A reply (its request's type and `req_id`, or `XS_ERROR`) or an `XS_WATCH_EVENT`.
        public var message: XenStoreMessage
        /// True for an `XS_WATCH_EVENT`, which a slow reader lets pile up; replies are bounded
        /// by the requests a connection may have outstanding.
        public var isWatchEvent: Bool { message.type == .watchEvent }
    }

    /// Called for every `XS_INTRODUCE` from dom0, before the domain counts as introduced (a
    /// throw is the reply), so a transport that serves rings attaches the guest's page and
    /// event channel. Called for a domain already introduced too: a transport that still
    /// serves its ring leaves it, one that dropped it attaches the page given now.
    public var onIntroduce: ((_ domain: DomainID, _ frame: UInt64, _ port: UInt32) throws(XenStoreError) -> Void)?
    /// Called when a domain is released (by `XS_RELEASE` or ``releaseDomain(_:)``), before
    /// `@releaseDomain` fires, so a ring transport can drop the guest's page and channel.
    public var onRelease: ((DomainID) -> Void)?

    /// The limits this engine enforces, fixed at creation.
    public let quotas: XenStoreQuotas
    var logger: Logger

    private var tree = XenStoreTree()
    /// Bumped by every change; a committed node carries the generation of its last change.
    private var generation: UInt64 = 0
    private var connections: [ConnectionID: Connection] = [:]
    /// The connections holding at least one watch: a change looks only at these, so its
    /// cost does not grow with connections that watch nothing.
    private var watching: Set<ConnectionID> = []
    private var nextConnection = 1
    private var introduced: Set<DomainID> = [.dom0]
    private var targets: [DomainID: DomainID] = [:]
    private var watchCount: [DomainID: Int] = [:]
    private var outbox: [Outgoing] = []

    private final class Connection {
        let domain: DomainID
        var watches: [Watch] = []
        var transactions: [UInt32: OpenTransaction] = [:]
        var nextTransaction: UInt32 = 1
        init(domain: DomainID) { self.domain = domain }
    }

    private struct Watch {
        /// As the client gave it (relative, absolute or `@special`).
        var given: String
        var absolute: String
        var token: String
        var isRelative: Bool
    }

    /// A change watches hear about.
    struct Change {
        var path: String
        var permissions: XenStorePermissions
        var recursive: Bool
    }

    /// An engine holding only the root node (`/`, owned by dom0, `n0`), with dom0 introduced
    /// and no connections. Refused requests are logged at debug level on `logger`.
    public init(quotas: XenStoreQuotas = XenStoreQuotas(), logger: Logger = Logger(label: "xenstore")) {
        self.quotas = quotas
        self.logger = logger
    }

    // MARK: connections

    /// Registers a connection that speaks for `domain` (dom0 for the Unix socket).
    public func connect(domain: DomainID) -> ConnectionID {
        let id = ConnectionID(rawValue: nextConnection)
        nextConnection += 1
        connections[id] = Connection(domain: domain)
        return id
    }

    /// Forgets a connection: its watches and open transactions go with it.
    public func disconnect(_ id: ConnectionID) {
        guard let conn = connections.removeValue(forKey: id) else { return }
        watching.remove(id)
        watchCount[conn.domain, default: 0] -= conn.watches.count
        outbox.removeAll { $0.connection == id }
    }

    /// Nodes in the committed tree.
    public var nodeCount: Int { tree.count }

    /// Nodes the open transactions make the store remember, summed (each is capped by
    /// `transactionNodes`).
    public var transactionFootprint: Int {
        connections.values.reduce(0) { sum, c in c.transactions.values.reduce(sum) { $0 + $1.footprint } }
    }

    /// The domain a connection speaks for.
    public func domain(of id: ConnectionID) -> DomainID? { connections[id]?.domain }

    /// Replies and watch events produced since the last call, in the order they must be sent.
    public func takeOutbox() -> [Outgoing] {
        defer { outbox.removeAll(keepingCapacity: true) }
        return outbox
    }

    /// Handles one request for a throw-away connection of `domain` and returns its reply;
    /// what the request causes for others (watch events) stays in the outbox.
    public func perform(_ request: XenStoreMessage, as domain: DomainID) -> XenStoreMessage {
        let id = connect(domain: domain)
        defer { disconnect(id) }
        handle(request, from: id)
        let reply = outbox.first { $0.connection == id }!.message
        outbox.removeAll { $0.connection == id }
        return reply
    }

    /// Introduces a domain from inside the process (what `XS_INTRODUCE` does for a toolstack).
    public func introduceDomain(_ domain: DomainID) {
        if introduced.insert(domain).inserted { fireSpecial("@introduceDomain", domain: domain) }
    }

    /// Releases a domain from inside the process and fires `@releaseDomain`.
    public func releaseDomain(_ domain: DomainID) {
        if introduced.remove(domain) != nil {
            onRelease?(domain)
            fireSpecial("@releaseDomain", domain: domain)
        }
    }

    // MARK: requests

    /// Handles one request; its reply (and any watch events) land in the outbox.
    public func handle(_ request: XenStoreMessage, from id: ConnectionID) {
        guard let conn = connections[id] else { return }
        do {
            let reply = try dispatch(request, conn, id)
            outbox.append(Outgoing(connection: id, message: XenStoreMessage(
                type: request.type, requestID: request.requestID, transactionID: request.transactionID,
                payload: reply)))
            if request.type == .watch, let w = conn.watches.last {
                // Xen fires a new watch once, right after the OK, so the watcher reads the
                // initial state without a race.
                queueEvent(conn: id, path: w.given, token: w.token)
            }
        } catch {
            logger.debug("\(id) \(conn.domain) \(request.type): \(error)")
            outbox.append(Outgoing(connection: id, message: XenStoreMessage(
                type: .error, requestID: request.requestID, transactionID: request.transactionID,
                strings: [error.code.rawValue])))
        }
    }

    private static let ok: [UInt8] = Array("OK\0".utf8)

    private func dispatch(_ m: XenStoreMessage, _ conn: Connection, _ id: ConnectionID) throws(XenStoreError) -> [UInt8] {
        let tx: OpenTransaction?
        switch m.type {
        case .read, .write, .mkdir, .rm, .directory, .directoryPart, .getPermissions, .setPermissions,
            .transactionEnd:
            if m.transactionID == 0 {
                tx = nil
            } else if let t = conn.transactions[m.transactionID] {
                // Checked before the request, so one request overshoots by at most the
                // nodes one path names.
                if m.type != .transactionEnd, t.footprint >= transactionNodeLimit(conn.domain) {
                    throw XenStoreError(.noSpace, "transaction touches \(t.footprint) nodes, the quota")
                }
                tx = t
            } else {
                throw XenStoreError(.noEntry, "no transaction \(m.transactionID)")
            }
        default:
            tx = nil
        }

        switch m.type {
        case .read:
            let path = try resolve(oneArg(m), conn)
            let node = try readable(path, conn, tx)
            return node.value
        case .write:
            guard let nul = m.payload.firstIndex(of: 0) else { throw XenStoreError(.invalid, "WRITE without a path") }
            let first = m.payload[..<nul]
            // The value is everything after the path's NUL, NULs included.
            let value = Array(m.payload[(nul + 1)...])
            let path = try resolve(String(decoding: first, as: UTF8.self), conn)
            try mutate(.write(path, value, createOnly: false), conn, tx)
            return Self.ok
        case .mkdir:
            let path = try resolve(oneArg(m), conn)
            try mutate(.write(path, [], createOnly: true), conn, tx)
            return Self.ok
        case .rm:
            let path = try resolve(oneArg(m), conn)
            try mutate(.remove(path), conn, tx)
            return Self.ok
        case .directory:
            let path = try resolve(oneArg(m), conn)
            let node = try readable(path, conn, tx)
            var out: [UInt8] = []
            for c in node.children {
                out.append(contentsOf: c.utf8)
                out.append(0)
            }
            guard out.count <= XenStoreLimits.payloadMax else {
                throw XenStoreError(.tooBig, "listing exceeds one message; use DIRECTORY_PART")
            }
            return out
        case .directoryPart:
            let args = try m.strings()
            guard args.count == 2, let offset = Int(args[1]), offset >= 0 else {
                throw XenStoreError(.invalid, "DIRECTORY_PART wants path and offset")
            }
            let path = try resolve(args[0], conn)
            let node = try readable(path, conn, tx)
            var all: [UInt8] = []
            for c in node.children {
                all.append(contentsOf: c.utf8)
                all.append(0)
            }
            guard offset <= all.count else { throw XenStoreError(.invalid, "offset past the listing") }
            var out = Array("\(node.childrenGeneration)".utf8) + [0]
            let room = XenStoreLimits.payloadMax - out.count - 1
            let rest = all.count - offset
            if rest <= room {
                out += all[offset...]
                out.append(0)  // an empty name marks the last part
            } else {
                out += all[offset..<(offset + room)]
            }
            return out
        case .getPermissions:
            let path = try resolve(oneArg(m), conn)
            let node = try readable(path, conn, tx)
            return node.permissions.strings.flatMap { Array($0.utf8) + [0] }
        case .setPermissions:
            let args = try m.strings()
            guard args.count >= 2, let perms = XenStorePermissions(strings: Array(args.dropFirst())) else {
                throw XenStoreError(.invalid, "SET_PERMS wants a path and permissions like n0 r1")
            }
            let path = try resolve(args[0], conn)
            try mutate(.setPermissions(path, perms), conn, tx)
            return Self.ok
        case .watch:
            let args = try m.strings()
            guard args.count >= 2 else { throw XenStoreError(.invalid, "WATCH wants path and token") }
            try addWatch(given: args[0], token: args[1], conn)
            watching.insert(id)
            return Self.ok
        case .unwatch:
            let args = try m.strings()
            guard args.count >= 2 else { throw XenStoreError(.invalid, "UNWATCH wants path and token") }
            let absolute = XenStorePath.isSpecial(args[0]) ? args[0] : try resolve(args[0], conn)
            guard let i = conn.watches.firstIndex(where: { $0.absolute == absolute && $0.token == args[1] }) else {
                throw XenStoreError(.noEntry, "no such watch")
            }
            conn.watches.remove(at: i)
            if conn.watches.isEmpty { watching.remove(id) }
            watchCount[conn.domain, default: 0] -= 1
            return Self.ok
        case .transactionStart:
            guard m.transactionID == 0 else { throw XenStoreError(.busy, "transactions do not nest") }
            // dom0 too: an open transaction holds memory whoever opened it.
            let cap = privileged(conn.domain) && !quotas.appliesToDom0
                ? quotas.dom0TransactionsPerConnection : quotas.transactionsPerConnection
            if conn.transactions.count >= cap {
                throw XenStoreError(.noSpace, "\(cap) transactions open on this connection, the quota")
            }
            var txid = conn.nextTransaction
            while txid == 0 || conn.transactions[txid] != nil { txid &+= 1 }
            conn.nextTransaction = txid &+ 1
            conn.transactions[txid] = OpenTransaction()
            return Array("\(txid)".utf8) + [0]
        case .transactionEnd:
            let arg = try oneArg(m)
            guard arg == "T" || arg == "F" else { throw XenStoreError(.invalid, "TRANSACTION_END wants T or F") }
            guard let t = tx else { throw XenStoreError(.noEntry, "no transaction") }
            conn.transactions[m.transactionID] = nil
            if arg == "T" { try commit(t, by: conn.domain) }
            return Self.ok
        case .getDomainPath:
            let domid = try domainArg(oneArg(m))
            return Array(XenStorePath.home(of: domid).utf8) + [0]
        case .isDomainIntroduced:
            let domid = try domainArg(oneArg(m))
            return Array((introduced.contains(domid) ? "T" : "F").utf8) + [0]
        case .introduce:
            try requirePrivilege(conn)
            let args = try m.strings()
            guard args.count >= 3, let frame = UInt64(args[1]), let port = UInt32(args[2]) else {
                throw XenStoreError(.invalid, "INTRODUCE wants domid, mfn, port")
            }
            let domid = try domainArg(args[0])
            // dom0 is introduced from the start and has no ring here.
            guard domid != .dom0 else { return Self.ok }
            // Asked for a domain already introduced too: a transport that cut the guest's
            // ring off (for a protocol or index error) attaches the fresh page, so dom0 can
            // give the guest its store back without releasing the domain.
            try onIntroduce?(domid, frame, port)
            introduceDomain(domid)
            return Self.ok
        case .release:
            try requirePrivilege(conn)
            let domid = try domainArg(oneArg(m))
            guard introduced.contains(domid), domid != .dom0 else { throw XenStoreError(.noEntry, "\(domid) not introduced") }
            releaseDomain(domid)
            return Self.ok
        case .resume:
            try requirePrivilege(conn)
            let domid = try domainArg(oneArg(m))
            guard introduced.contains(domid) else { throw XenStoreError(.noEntry, "\(domid) not introduced") }
            return Self.ok
        case .setTarget:
            try requirePrivilege(conn)
            let args = try m.strings()
            guard args.count >= 2 else { throw XenStoreError(.invalid, "SET_TARGET wants two domids") }
            targets[try domainArg(args[0])] = try domainArg(args[1])
            return Self.ok
        case .resetWatches:
            watchCount[conn.domain, default: 0] -= conn.watches.count
            conn.watches.removeAll()
            watching.remove(id)
            conn.transactions.removeAll()
            return Self.ok
        case .control:
            throw XenStoreError(.invalid, "no control commands")
        default:
            throw XenStoreError(.invalid, "unknown message type \(m.type.rawValue)")
        }
    }

    // MARK: arguments and checks

    private func oneArg(_ m: XenStoreMessage) throws(XenStoreError) -> String {
        let args = try m.strings()
        guard args.count == 1 else { throw XenStoreError(.invalid, "\(m.type) wants exactly one string") }
        return args[0]
    }

    private func domainArg(_ s: String) throws(XenStoreError) -> DomainID {
        guard let raw = UInt16(s), String(raw) == s, DomainID(raw).isGuestDomain else {
            throw XenStoreError(.invalid, "not a domain id: \(s.prefix(16))")
        }
        return DomainID(raw)
    }

    private func resolve(_ path: String, _ conn: Connection) throws(XenStoreError) -> String {
        try XenStorePath.resolve(path, for: conn.domain)
    }

    private func privileged(_ domain: DomainID) -> Bool { domain == .dom0 }

    private func requirePrivilege(_ conn: Connection) throws(XenStoreError) {
        guard privileged(conn.domain) else { throw XenStoreError(.accessDenied, "privileged operation") }
    }

    /// Whether quotas bind this domain.
    private func bound(_ domain: DomainID) -> Bool { quotas.appliesToDom0 || !privileged(domain) }

    private func access(_ domain: DomainID, _ perms: XenStorePermissions) -> XenStorePermission.Access {
        if privileged(domain) { return .both }
        let mine = perms.access(for: domain)
        // XS_SET_TARGET: a device model domain acts with its target's rights too.
        if let target = targets[domain] {
            let theirs = perms.access(for: target)
            if mine == .none { return theirs }
            if theirs == .both || (mine.canRead && theirs.canWrite) || (mine.canWrite && theirs.canRead) {
                return .both
            }
        }
        return mine
    }

    /// The transaction-nodes quota for `domain`.
    private func transactionNodeLimit(_ domain: DomainID) -> Int {
        privileged(domain) && !quotas.appliesToDom0 ? quotas.dom0TransactionNodes : quotas.transactionNodes
    }

    /// The error for a path that does not exist: `EACCES` if the caller could not even read
    /// the nearest existing ancestor (so absence leaks nothing), else `ENOENT`.
    private func missing<T: XenStoreNodes>(_ path: String, _ domain: DomainID, _ t: T) -> XenStoreError {
        var p = XenStorePath.parent(of: path)
        while t[p] == nil { p = XenStorePath.parent(of: p) }
        if access(domain, t[p]!.permissions).canRead {
            return XenStoreError(.noEntry, "no such node")
        }
        return XenStoreError(.accessDenied, "permission denied")
    }

    private func readable(_ path: String, _ conn: Connection, _ tx: OpenTransaction?) throws(XenStoreError) -> XenStoreNode {
        if let tx { return try readable(path, conn.domain, OpenTransactionView(base: tree, transaction: tx)) }
        return try readable(path, conn.domain, tree)
    }

    private func readable<T: XenStoreNodes>(_ path: String, _ domain: DomainID, _ t: T) throws(XenStoreError) -> XenStoreNode {
        guard let node = t[path] else { throw missing(path, domain, t) }
        guard access(domain, node.permissions).canRead else {
            throw XenStoreError(.accessDenied, "permission denied")
        }
        return node
    }

    // MARK: mutations

    private enum Mutation {
        case write(String, [UInt8], createOnly: Bool)
        case remove(String)
        case setPermissions(String, XenStorePermissions)
    }

    /// Applies `op` to the tree the request sees: in the transaction (remembered for its
    /// commit), or in the store (stamped with a new generation, watches fired).
    private func mutate(_ op: Mutation, _ conn: Connection, _ tx: OpenTransaction?) throws(XenStoreError) {
        if let tx {
            var view = OpenTransactionView(base: tree, transaction: tx)
            if let change = try apply(op, conn.domain, &view).change { tx.note(change) }
        } else {
            let (changed, change) = try apply(op, conn.domain, &tree)
            stamp(changed)
            if let change { fire(change) }
        }
    }

    private func apply<T: XenStoreNodes>(
        _ op: Mutation, _ domain: DomainID, _ t: inout T
    ) throws(XenStoreError) -> (changed: [String], change: Change?) {
        switch op {
        case .write(let path, let value, let createOnly): try write(path, value, domain, &t, createOnly: createOnly)
        case .remove(let path): try remove(path, domain, &t)
        case .setPermissions(let path, let perms): try setPermissions(path, perms, domain, &t)
        }
    }

    private func stamp(_ changed: [String]) {
        guard !changed.isEmpty else { return }
        generation += 1
        for p in changed { tree.stamp(p, generation) }
    }

    private func write<T: XenStoreNodes>(
        _ path: String, _ value: [UInt8], _ domain: DomainID, _ t: inout T, createOnly: Bool
    ) throws(XenStoreError) -> (changed: [String], change: Change?) {
        if bound(domain), value.count > quotas.valueSize {
            throw XenStoreError(.noSpace, "value larger than the entry quota")
        }
        if var node = t[path] {
            guard access(domain, node.permissions).canWrite else {
                throw XenStoreError(.accessDenied, "permission denied")
            }
            if createOnly { return ([], nil) }
            node.value = value
            t.set(path, node)
            return ([path], Change(path: path, permissions: node.permissions, recursive: false))
        }
        // Create the missing chain below the nearest existing ancestor, which must be writable.
        var missingChain = [path]
        var ancestor = XenStorePath.parent(of: path)
        while t[ancestor] == nil {
            missingChain.append(ancestor)
            ancestor = XenStorePath.parent(of: ancestor)
        }
        guard access(domain, t[ancestor]!.permissions).canWrite else {
            throw XenStoreError(.accessDenied, "permission denied")
        }
        var perms = t[ancestor]!.permissions
        if !privileged(domain) { perms.owner = domain }
        if bound(domain), t.ownedCount(perms.owner) + missingChain.count > quotas.nodesPerDomain {
            throw XenStoreError(.noSpace, "node quota reached")
        }
        var changed = [ancestor]
        var parentPath = ancestor
        for p in missingChain.reversed() {
            generation += 1
            t.editChildren(of: parentPath, generation: generation) { $0.append(XenStorePath.name(of: p)) }
            t.set(p, XenStoreNode(value: p == path ? value : [], permissions: perms))
            changed.append(p)
            parentPath = p
        }
        return (changed, Change(path: path, permissions: perms, recursive: false))
    }

    private func remove<T: XenStoreNodes>(
        _ path: String, _ domain: DomainID, _ t: inout T
    ) throws(XenStoreError) -> (changed: [String], change: Change?) {
        guard path != "/" else { throw XenStoreError(.invalid, "cannot remove the root") }
        guard let node = t[path] else {
            // Xen: removing an absent node is fine if its parent exists.
            let parentPath = XenStorePath.parent(of: path)
            if let parent = t[parentPath], access(domain, parent.permissions).canRead { return ([], nil) }
            throw missing(path, domain, t)
        }
        guard access(domain, node.permissions).canWrite else {
            throw XenStoreError(.accessDenied, "permission denied")
        }
        let removed = t.subtree(path)
        for p in removed { t.drop(p) }
        let parentPath = XenStorePath.parent(of: path)
        generation += 1
        t.editChildren(of: parentPath, generation: generation) { $0.remove(XenStorePath.name(of: path)) }
        return (removed + [parentPath], Change(path: path, permissions: node.permissions, recursive: true))
    }

    private func setPermissions<T: XenStoreNodes>(
        _ path: String, _ perms: XenStorePermissions, _ domain: DomainID, _ t: inout T
    ) throws(XenStoreError) -> (changed: [String], change: Change?) {
        guard var node = t[path] else { throw missing(path, domain, t) }
        if bound(domain), perms.entries.count > quotas.permissionsPerNode {
            throw XenStoreError(.noSpace, "\(perms.entries.count) permission entries, over the quota of \(quotas.permissionsPerNode)")
        }
        if !privileged(domain) {
            // Xen: only the owner may change permissions (write or even `b` access is not
            // enough), and it may not give the node away.
            guard node.permissions.owner == domain else {
                throw XenStoreError(.accessDenied, "only the owner may change permissions")
            }
            guard perms.owner == node.permissions.owner else {
                throw XenStoreError(.notPermitted, "an unprivileged domain may not change the owner")
            }
        }
        node.permissions = perms
        t.set(path, node)
        return ([path], Change(path: path, permissions: perms, recursive: false))
    }

    /// Applies `t` to the store for `domain`, or throws and applies nothing: `EAGAIN` if a
    /// node it touched changed since, `ENOSPC` if the nodes it adds would take an owner over
    /// `nodesPerDomain`.
    private func commit(_ t: OpenTransaction, by domain: DomainID) throws(XenStoreError) {
        if let p = t.conflict(with: tree) { throw XenStoreError(.again, "conflicting change to \(p)") }
        guard !t.written.isEmpty || !t.removed.isEmpty else { return }
        // Each request checked the quota against the store as the transaction saw it; other
        // transactions (and plain writes) may have added nodes since without touching any
        // node this one did, so check again against the store as it is now. The same errno
        // as a write over the quota. Exact: no node this transaction touched has changed, so
        // its per-owner difference still holds.
        if bound(domain) {
            for (owner, added) in t.ownedDelta where added > 0 {
                if t.ownedCount(owner, in: tree) > quotas.nodesPerDomain {
                    throw XenStoreError(.noSpace, "commit would take \(owner) over its node quota")
                }
            }
        }
        for p in t.removed { tree.drop(p) }
        for (p, node) in t.written { tree.set(p, node) }
        stamp(Array(t.written.keys) + Array(t.removed))
        for c in t.changes { fire(c) }
    }

    // MARK: watches

    private func addWatch(given: String, token: String, _ conn: Connection) throws(XenStoreError) {
        let absolute: String
        if XenStorePath.isSpecial(given) {
            guard given.utf8.count <= XenStoreLimits.relativePathMax else {
                throw XenStoreError(.invalid, "special path too long")
            }
            absolute = given
        } else {
            absolute = try resolve(given, conn)
        }
        // An event carries a path under the watch and the token: refuse a token that would
        // let one exceed XENSTORE_PAYLOAD_MAX rather than ever send an oversized message.
        let isRelative = !given.hasPrefix("/") && !XenStorePath.isSpecial(given)
        let longestPath = XenStorePath.isSpecial(given) ? given.utf8.count
            : isRelative ? XenStoreLimits.relativePathMax : XenStoreLimits.absolutePathMax
        guard longestPath + token.utf8.count + 2 <= XenStoreLimits.payloadMax else {
            throw XenStoreError(.tooBig, "a token of \(token.utf8.count) bytes would not fit in a watch event")
        }
        guard !conn.watches.contains(where: { $0.absolute == absolute && $0.token == token }) else {
            throw XenStoreError(.exists, "watch already set")
        }
        if bound(conn.domain), watchCount[conn.domain, default: 0] >= quotas.watchesPerDomain {
            throw XenStoreError(.tooBig, "watch quota reached")
        }
        conn.watches.append(Watch(given: given, absolute: absolute, token: token,
                                  isRelative: !given.hasPrefix("/") && !XenStorePath.isSpecial(given)))
        watchCount[conn.domain, default: 0] += 1
    }

    private func queueEvent(conn: ConnectionID, path: String, token: String) {
        let event = XenStoreMessage(type: .watchEvent, strings: [path, token])
        // addWatch keeps tokens short enough; this is the last line of defence for the wire.
        guard event.payload.count <= XenStoreLimits.payloadMax else {
            logger.error("\(conn): dropping a \(event.payload.count)-byte watch event over XENSTORE_PAYLOAD_MAX")
            return
        }
        outbox.append(Outgoing(connection: conn, message: event))
    }

    /// Fires watches for one change: watches on the path or above it get the path; for a
    /// removal, watches below it get their own path (the subtree went away).
    private func fire(_ change: Change) {
        for id in watching.sorted() {
            let conn = connections[id]!
            guard access(conn.domain, change.permissions).canRead else { continue }
            for w in conn.watches where !XenStorePath.isSpecial(w.absolute) {
                var eventPath: String?
                if XenStorePath.isWithin(change.path, w.absolute) {
                    eventPath = change.path
                } else if change.recursive && XenStorePath.isWithin(w.absolute, change.path) {
                    eventPath = w.absolute
                }
                guard var shown = eventPath else { continue }
                if w.isRelative {
                    let home = XenStorePath.home(of: conn.domain) + "/"
                    if shown.hasPrefix(home) { shown.removeFirst(home.count) }
                }
                queueEvent(conn: id, path: shown, token: w.token)
            }
        }
    }

    private func fireSpecial(_ name: String, domain: DomainID) {
        for id in watching.sorted() {
            let conn = connections[id]!
            guard privileged(conn.domain) || conn.domain == domain else { continue }
            for w in conn.watches where w.absolute == name {
                queueEvent(conn: id, path: name, token: w.token)
            }
        }
    }
}
