import Glibc
import XenLocks
import XenStore

/// A guest's store connection that can move to another host's store after a save or
/// migration, under the same `XenStoreClient`: the client's reader thread goes on
/// reading from the new socket, and the watches set on the old one are set again on
/// the new one (each fires once there, as a new watch does, so a watcher re-reads).
///
/// Watches are followed from the requests that pass through (`XS_WATCH`,
/// `XS_UNWATCH`); their replies on the new connection carry request ids the client
/// never issued, which it ignores. A request sent on the old connection whose reply
/// had not come before the move gets no reply: the guest is quiesced then.
final class MovableStoreTransport: XenStoreTransport, @unchecked Sendable {
    // @unchecked: `current`, `watches` and `moves` are guarded by `lock`.
    private let lock = Lock()
    private var current: XenStoreSocketTransport
    private var watches: [String: [UInt8]] = [:]
    private var moves = 0
    /// Request ids for the re-sent watches: far above the client's own.
    private var nextReplayID: UInt32 = 0xF000_0000

    init(connectedSocket fd: Int32) { current = XenStoreSocketTransport(connectedSocket: fd) }

    func send(_ bytes: [UInt8]) throws(XenStoreError) {
        let target = lock.withLock { () -> XenStoreSocketTransport in
            note(bytes)
            return current
        }
        try target.send(bytes)
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        while true {
            let (target, seen) = lock.withLock { (current, moves) }
            let n: Int
            do { n = try target.receive(into: buffer) } catch {
                if lock.withLock({ moves != seen }) { continue }
                throw error
            }
            // The old connection's end after a move is not the client's end.
            if n == 0, lock.withLock({ moves != seen }) { continue }
            return n
        }
    }

    func shutdown() { lock.withLock { current }.shutdown() }

    /// Continues on `fd` (a connection to the destination's store speaking as the
    /// same domain): the watches go again, then the old connection is shut down.
    func move(to fd: Int32) {
        let next = XenStoreSocketTransport(connectedSocket: fd)
        let (old, replay) = lock.withLock { () -> (XenStoreSocketTransport, [[UInt8]]) in
            let old = current
            current = next
            moves += 1
            var out: [[UInt8]] = []
            for payload in watches.values {
                out.append(Self.message(type: 4, id: nextReplayID, payload: payload))
                nextReplayID &+= 1
            }
            return (old, out)
        }
        for m in replay { try? next.send(m) }
        old.shutdown()
    }

    /// Follows `XS_WATCH` (4) and `XS_UNWATCH` (5). Caller holds `lock`.
    private func note(_ bytes: [UInt8]) {
        guard bytes.count >= 16 else { return }
        let type = Self.word(bytes, 0)
        guard type == 4 || type == 5 else { return }
        let payload = Array(bytes[16...])
        // Keyed by the token (the second string): one watch per token.
        let parts = payload.split(separator: 0, omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return }
        let token = String(decoding: parts[1], as: UTF8.self)
        if type == 4 { watches[token] = payload } else { watches[token] = nil }
    }

    private static func word(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }

    private static func message(type: UInt32, id: UInt32, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for w in [type, id, 0, UInt32(payload.count)] { withUnsafeBytes(of: w.littleEndian) { out.append(contentsOf: $0) } }
        return out + payload
    }
}
