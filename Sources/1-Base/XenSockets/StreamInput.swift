import Glibc

/// Bytes from a stream socket through a buffer: one `recv` takes whatever the peer has
/// sent (several NBD requests or replies, say), where reading each header and each
/// payload on its own costs a system call apiece. What is buffered is copied out or
/// scattered into iovecs; long data can be read straight into its iovecs once the
/// buffered part is taken.
///
/// It never waits: ``receive(_:)`` says when the socket holds nothing, and the owner
/// decides how to wait (its timeouts, its stop). One thread at a time uses an input.
public struct StreamInput: ~Copyable {
    /// Bytes the buffer holds.
    public let capacity: Int

    private let buffer: UnsafeMutableRawPointer
    /// The buffered bytes not yet taken: `start..<end`.
    private var start = 0
    private var end = 0
    /// `recv` and `recvmsg` calls that returned bytes, for tests.
    public private(set) var receives = 0
    /// `recv` and `recvmsg` calls that found the socket empty (`EAGAIN`), for tests.
    public private(set) var dryReceives = 0
    /// The last receive brought bytes, but fewer than it had room for: the socket held no
    /// more at that moment (a stream socket's `recv` returns all it holds, up to the room).
    /// An owner that waits for readability anyway may skip the `recv` that would only say
    /// so. (One that found nothing has said so itself: `.nothingYet`.)
    public private(set) var readDry = false

    /// An empty input of `capacity` bytes.
    public init(capacity: Int = 64 << 10) {
        self.capacity = capacity
        buffer = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// What one receive did.
    public enum Received: Sendable {
        /// Bytes were appended (or, for ``receiveDirect(_:into:_:first:)``, read).
        case bytes
        /// The socket holds nothing now.
        case nothingYet
        /// The peer closed its end.
        case endOfStream
        /// `recv` failed with this `errno`.
        case failed(Int32)
    }

    /// Bytes buffered and not yet taken.
    public var buffered: Int { end - start }

    /// The buffered bytes not yet taken.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buffer + start, count: end - start) }

    /// Takes `count` buffered bytes (at most ``buffered``) without copying them.
    public mutating func consume(_ count: Int) {
        precondition(count <= buffered, "consuming more than is buffered")
        start += count
    }

    /// Copies up to `count` buffered bytes to `destination` and takes them; how many.
    public mutating func copy(into destination: UnsafeMutableRawPointer, count: Int) -> Int {
        let n = min(count, buffered)
        destination.copyMemory(from: buffer + start, byteCount: n)
        start += n
        return n
    }

    /// Forgets what is buffered (the connection it came from is gone).
    public mutating func reset() {
        start = 0
        end = 0
    }

    /// Appends what the socket holds now (no wait), keeping what is buffered.
    public mutating func receive(_ fd: Int32) -> Received {
        if start > 0 {
            if start < end { buffer.copyMemory(from: buffer + start, byteCount: end - start) }
            end -= start
            start = 0
        }
        precondition(end < capacity, "receiving into a full buffer")
        while true {
            let room = capacity - end
            let n = recv(fd, buffer + end, room, Int32(MSG_DONTWAIT))
            if n > 0 {
                end += n
                receives += 1
                readDry = n < room
                return .bytes
            }
            if n == 0 { return .endOfStream }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK {
                dryReceives += 1
                readDry = false
                return .nothingYet
            }
            if e != EINTR { return .failed(e) }
        }
    }

    /// Copies buffered bytes into `vectors[first..<count]` (advancing them in place and
    /// `first` past the filled ones), at most `limit`; how many bytes it copied.
    public mutating func scatter(into vectors: UnsafeMutablePointer<iovec>, _ count: Int, first: inout Int, limit: Int) -> Int {
        var copied = 0
        while first < count && copied < limit && start < end {
            let n = min(vectors[first].iov_len, end - start, limit - copied)
            if n > 0, let base = vectors[first].iov_base {
                base.copyMemory(from: buffer + start, byteCount: n)
            }
            start += n
            copied += n
            vectors[first].iov_base = vectors[first].iov_base.map { $0 + n }
            vectors[first].iov_len -= n
            if vectors[first].iov_len == 0 { first += 1 }
        }
        return copied
    }

    /// Reads from the socket straight into `vectors[first..<count]` (at most `IOV_MAX` of
    /// them; advancing them in place and `first`), the buffer being empty; no wait. Bytes
    /// read, or what stopped it (`EINVAL` when the vectors have no room left: the caller
    /// asked for more than they hold).
    public mutating func receiveDirect(_ fd: Int32, into vectors: UnsafeMutablePointer<iovec>, _ count: Int,
                                       first: inout Int) -> (Int, Received) {
        precondition(start == end, "reading past buffered bytes")
        while first < count && vectors[first].iov_len == 0 { first += 1 }
        guard first < count else { return (0, .failed(EINVAL)) }
        var room = 0
        for i in first..<count { room += vectors[i].iov_len }
        while true {
            var msg = msghdr()
            msg.msg_iov = vectors + first
            msg.msg_iovlen = count - first
            let n = recvmsg(fd, &msg, Int32(MSG_DONTWAIT))
            if n > 0 {
                receives += 1
                readDry = n < room
                IOVectors.advance(vectors, count, first: &first, by: n)
                return (n, .bytes)
            }
            if n == 0 { return (0, .endOfStream) }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK {
                dryReceives += 1
                readDry = false
                return (0, .nothingYet)
            }
            if e != EINTR { return (0, .failed(e)) }
        }
    }
}
