// Store-engine operation sequences: the input is a list of operations
// (write, read, mkdir, rm, directory, directory-part, set-perms, get-perms,
// watch, unwatch, transaction start/end, set-target, introduce/release,
// reset-watches, get-domain-path, raw message) issued on five connections
// (dom0, dom1, dom2, dom3, and a second dom1 connection) to one XenStoreEngine.
//
// Each operation takes 4 bytes: kind, connection, path, argument (value,
// permission set, transaction choice); a raw message takes its payload from
// the following bytes. Invariants checked after every operation:
// - exactly one reply per request, with its request id; watch events only to
//   a connection that set a watch with that token;
// - a non-privileged domain never reads, lists or gets the permissions of a
//   node outside a transaction unless the node's permissions (as dom0 sees them)
//   let it or its XS_SET_TARGET target read;
// - a write outside a transaction that succeeded is what dom0 reads back;
// - a domU's failed request changes nothing dom0 can see at that path;
// and at the end, the tree as dom0 lists it is consistent (every listed child
// reads, every node has permissions) and bounded by the quota.
import XenABI
import XenStore
import XenStoreServer

let paths: [String] = [
    "/", "/local", "/local/domain", "/local/domain/1", "/local/domain/1/device/vif/0",
    "/local/domain/2", "/local/domain/2/data", "/local/domain/3/x", "/backend/vif/1/0",
    "/backend/vif/1/0/state", "/tool", "device", "device/vif/0/state", "data/a",
    "data/a/b", "x", "@introduceDomain", "@releaseDomain", "", "a//b", "/x/", "/x/y/z",
    "error/\u{e9}", "/local/domain/0", "/local/domain/1/error", "memory/target",
    "/local/domain/3", "d", "d/e", "d/e/f", "/backend", "control",
]
let domains: [DomainID] = [.dom0, DomainID(1), DomainID(2), DomainID(3), DomainID(1)]
let permissionSets: [[String]] = [
    ["n0"], ["r0"], ["b0"], ["n1"], ["n1", "r2"], ["r1"], ["n2", "b1"], ["w2", "r3"], ["n3", "r1", "w2"],
    ["b2"], ["n1", "n2"], ["x1"], ["n65535"], ["n01"], [], ["n1", "w0"],
]

struct Input {
    var bytes: UnsafeRawBufferPointer
    var at = 0
    var isEmpty: Bool { at >= bytes.count }
    mutating func byte() -> UInt8 {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return bytes[at]
    }
    mutating func take(_ n: Int) -> [UInt8] {
        let end = min(bytes.count, at + n)
        defer { at = end }
        return Array(bytes[at..<end])
    }
}

final class Harness {
    let engine = XenStoreEngine()
    var connections: [XenStoreEngine.ConnectionID] = []
    var transactions: [[UInt32]]
    var tokens: [Set<String>]
    var targets: [DomainID: DomainID] = [:]
    var requestID: UInt32 = 0

    init() {
        for d in domains {
            if d != .dom0 { engine.introduceDomain(d) }
            connections.append(engine.connect(domain: d))
        }
        transactions = Array(repeating: [], count: domains.count)
        tokens = Array(repeating: [], count: domains.count)
        _ = engine.takeOutbox()
    }

    /// Sends one request on connection `c`; returns the reply after checking the outbox.
    @discardableResult
    func send(_ c: Int, _ type: XenStoreMessageType, tx: UInt32 = 0, payload: [UInt8]) -> XenStoreMessage {
        requestID &+= 1
        let request = XenStoreMessage(type: type, requestID: requestID, transactionID: tx, payload: payload)
        engine.handle(request, from: connections[c])
        var reply: XenStoreMessage?
        for out in engine.takeOutbox() {
            guard let k = connections.firstIndex(of: out.connection) else { preconditionFailure("reply to an unknown connection") }
            if out.isWatchEvent {
                let parts = (try? out.message.strings()) ?? []
                precondition(parts.count == 2 && tokens[k].contains(parts[1]),
                             "watch event \(parts) to connection \(k), which set no such token")
            } else {
                precondition(k == c && reply == nil, "reply to the wrong connection, or two replies")
                precondition(out.message.requestID == requestID && out.message.transactionID == tx)
                reply = out.message
            }
        }
        guard let reply else { preconditionFailure("no reply to \(request)") }
        return reply
    }

    func send(_ c: Int, _ type: XenStoreMessageType, tx: UInt32 = 0, strings: [String]) -> XenStoreMessage {
        send(c, type, tx: tx, payload: XenStoreMessage(type: type, strings: strings).payload)
    }

    /// What dom0 sees at `path` outside any transaction: value and permissions, nil if absent.
    func observe(_ path: String) -> (value: [UInt8], perms: [String])? {
        let read = send(0, .read, strings: [path])
        guard read.type == .read else { return nil }
        let perms = send(0, .getPermissions, strings: [path])
        precondition(perms.type == .getPermissions, "dom0 reads \(path) but cannot get its permissions")
        let list = (try? perms.strings()) ?? []
        precondition(!list.isEmpty, "node \(path) without permissions")
        return (read.payload, list)
    }

    func canRead(_ domain: DomainID, _ perms: [String]) -> Bool {
        guard let p = XenStorePermissions(strings: perms) else { preconditionFailure("unparsable permissions \(perms)") }
        if p.access(for: domain).canRead { return true }
        if let target = targets[domain], p.access(for: target).canRead { return true }
        return false
    }

    func absolute(_ path: String, for domain: DomainID) -> String? {
        try? XenStorePath.resolve(path, for: domain)
    }

    func step(_ input: inout Input) {
        let kind = input.byte()
        let c = Int(input.byte()) % connections.count
        let domain = domains[c]
        let path = paths[Int(input.byte()) % paths.count]
        let arg = input.byte()
        // A transaction of this connection (most recent first), none, or a made-up one.
        var tx: UInt32 = 0
        if arg & 0xc0 == 0x40, let last = transactions[c].last { tx = last }
        if arg & 0xc0 == 0x80 { tx = UInt32(arg & 0x3f) }
        let before = domain != .dom0 ? absolute(path, for: domain) : nil
        let beforeState = before.flatMap(observe)

        var reply: XenStoreMessage
        switch kind % 18 {
        case 0, 1:
            let value = Array(repeating: UInt8(ascii: "a") &+ (arg & 7), count: Int(arg >> 3) * (kind > 200 ? 80 : 1))
            reply = send(c, .write, tx: tx, payload: Array(path.utf8) + [0] + value)
            if reply.type == .write, tx == 0, let abs = absolute(path, for: domain) {
                precondition(observe(abs)?.value == value, "write to \(abs) not read back")
            }
        case 2:
            reply = send(c, .read, tx: tx, strings: [path])
            if reply.type == .read, tx == 0, domain != .dom0, let abs = absolute(path, for: domain) {
                guard let seen = observe(abs) else { preconditionFailure("\(domain) read \(abs), which dom0 cannot") }
                precondition(canRead(domain, seen.perms), "\(domain) read \(abs) with permissions \(seen.perms)")
                precondition(seen.value == reply.payload)
            }
        case 3:
            reply = send(c, .mkdir, tx: tx, strings: [path])
        case 4:
            reply = send(c, .rm, tx: tx, strings: [path])
            if reply.type == .rm, tx == 0, let abs = absolute(path, for: domain) {
                precondition(observe(abs) == nil, "\(abs) still there after rm")
            }
        case 5:
            reply = send(c, .directory, tx: tx, strings: [path])
            checkRead(reply, .directory, tx, domain, path)
        case 6:
            reply = send(c, .directoryPart, tx: tx, strings: [path, String(arg & 15)])
        case 7:
            reply = send(c, .setPermissions, tx: tx, strings: [path] + permissionSets[Int(arg & 15)])
        case 8:
            reply = send(c, .getPermissions, tx: tx, strings: [path])
            checkRead(reply, .getPermissions, tx, domain, path)
        case 9:
            // Recorded before sending: a new watch fires once right after its OK.
            let token = "t\(arg & 7)"
            tokens[c].insert(token)
            reply = send(c, .watch, strings: [path, token])
        case 10:
            reply = send(c, .unwatch, strings: [path, "t\(arg & 7)"])
        case 11:
            reply = send(c, .transactionStart, tx: tx, strings: [""])
            if reply.type == .transactionStart, let id = UInt32(reply.text) {
                precondition(id != 0 && !transactions[c].contains(id), "transaction id \(id) reused")
                transactions[c].append(id)
            }
        case 12:
            reply = send(c, .transactionEnd, tx: tx, strings: [arg & 1 == 0 ? "T" : (arg & 2 == 0 ? "F" : "X")])
            if tx != 0, reply.type == .transactionEnd || (reply.type == .error && reply.text == "EAGAIN") {
                transactions[c].removeAll { $0 == tx }
            }
        case 13:
            let a = String(arg & 3), b = String(arg >> 2 & 3)
            reply = send(c, .setTarget, strings: [a, b])
            if reply.type == .setTarget {
                precondition(domain == .dom0, "\(domain) set a target")
                targets[DomainID(UInt16(a)!)] = DomainID(UInt16(b)!)
            }
        case 14:
            let d = String(arg & 7)
            if arg & 8 == 0 {
                reply = send(c, .introduce, strings: [d, "1234", "5"])
            } else {
                reply = send(c, .release, strings: [d])
            }
            if reply.type != .error { precondition(domain == .dom0, "\(domain) introduced or released") }
        case 15:
            reply = send(c, .resetWatches, payload: [])
            if reply.type == .resetWatches { transactions[c] = [] }
        case 16:
            reply = send(c, .getDomainPath, strings: [String(arg)])
        default:
            // A raw message of any type, with any payload.
            let type = XenStoreMessageType(rawValue: UInt32(arg & 31))
            let payload = input.take(Int(kind & 31))
            if type == .watch, let parts = try? XenStoreMessage(type: type, payload: payload).strings(), parts.count >= 2 {
                tokens[c].insert(parts[1])
            }
            reply = send(c, type, tx: tx, payload: payload)
            if type == .transactionStart, reply.type == .transactionStart, let id = UInt32(reply.text) {
                transactions[c].append(id)
            }
        }
        if reply.type == .error {
            // A refused request of a guest changes nothing at its path (outside transactions).
            if let before, tx == 0 {
                let after = observe(before)
                precondition(after?.value == beforeState?.value && after?.perms == beforeState?.perms,
                             "refused request changed \(before)")
            }
        }
    }

    /// A guest's successful read-like request on a node it may read.
    func checkRead(_ reply: XenStoreMessage, _ type: XenStoreMessageType, _ tx: UInt32, _ domain: DomainID, _ path: String) {
        guard reply.type == type, tx == 0, domain != .dom0, let abs = absolute(path, for: domain) else { return }
        guard let seen = observe(abs) else { preconditionFailure("\(domain) saw \(abs), which dom0 cannot") }
        precondition(canRead(domain, seen.perms), "\(domain) saw \(abs) with permissions \(seen.perms)")
    }

    /// Walks the tree as dom0: every listed child reads and has permissions.
    func checkTree() {
        var pending = ["/"]
        var seen = 0
        while let path = pending.popLast() {
            seen += 1
            precondition(seen < 100_000)
            precondition(observe(path) != nil, "listed node \(path) does not read")
            let listing = send(0, .directory, strings: [path])
            precondition(listing.type == .directory, "dom0 cannot list \(path)")
            for child in (try? listing.strings()) ?? [] {
                precondition(!child.isEmpty && !child.contains("/"), "bad child name \(child) under \(path)")
                pending.append(XenStorePath.join(path, child))
            }
        }
    }
}

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let harness = Harness()
    var input = Input(bytes: bytes)
    var steps = 0
    while !input.isEmpty && steps < 400 {
        harness.step(&input)
        steps += 1
    }
    harness.checkTree()
    for c in harness.connections { harness.engine.disconnect(c) }
}
