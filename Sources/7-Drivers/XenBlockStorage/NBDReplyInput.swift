import Glibc

/// The NBD reader thread's side of the socket: replies come through a buffer, so one
/// `recv` takes every reply already waiting, where reading each reply's header and then a
/// read's data on their own cost two system calls per reply. At queue depth 32 a server
/// usually has several replies out at once. A read's data longer than a quarter of the
/// buffer is read straight into the read's buffers once the buffered part is copied.
///
/// It never waits: ``receive(_:)`` says when the socket holds nothing, and the engine
/// decides how to wait (its timeouts, its stop).
struct NBDReplyInput: ~Copyable {
    static let capacity = 64 << 10
    /// Data longer than this goes straight from the socket into its buffers.
    static let directThreshold = capacity / 4

    private let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    /// The buffered bytes not yet taken: `start..<end`.
    private var start = 0
    private var end = 0
    /// `recv` and `recvmsg` calls that returned bytes, for tests.
    private(set) var receives = 0

    init() {}

    deinit { buffer.deallocate() }

    /// What one receive did.
    enum Received {
        case bytes
        case nothingYet
        case endOfStream
        case failed(Int32)
    }

    /// Bytes buffered and not yet taken.
    var buffered: Int { end - start }

    /// The buffered bytes not yet taken.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buffer + start, count: end - start) }

    /// Takes `count` buffered bytes (at most ``buffered``) without copying them.
    mutating func consume(_ count: Int) {
        precondition(count <= buffered, "consuming more than is buffered")
        start += count
    }

    /// Forgets what is buffered (the connection it came from is gone).
    mutating func reset() {
        start = 0
        end = 0
    }

    /// Appends what the socket holds now (no wait), keeping what is buffered.
    mutating func receive(_ fd: Int32) -> Received {
        if start > 0 {
            if start < end { buffer.copyMemory(from: buffer + start, byteCount: end - start) }
            end -= start
            start = 0
        }
        precondition(end < Self.capacity, "receiving into a full buffer")
        while true {
            let n = recv(fd, buffer + end, Self.capacity - end, Int32(MSG_DONTWAIT))
            if n > 0 {
                end += n
                receives += 1
                return .bytes
            }
            if n == 0 { return .endOfStream }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return .nothingYet }
            if e != EINTR { return .failed(e) }
        }
    }

    /// Copies buffered bytes into `vectors[first..<count]` (advancing them in place and
    /// `first` past the filled ones), at most `limit`; how many bytes it copied.
    mutating func scatter(into vectors: UnsafeMutablePointer<iovec>, _ count: Int, first: inout Int, limit: Int) -> Int {
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

    /// Reads from the socket straight into `vectors[first..<count]` (advancing them in
    /// place and `first`), the buffer being empty; no wait. Bytes read, or what stopped it
    /// (`EINVAL` when the vectors have no room left: the caller asked for more than they hold).
    mutating func receiveDirect(_ fd: Int32, into vectors: UnsafeMutablePointer<iovec>, _ count: Int,
                                first: inout Int) -> (Int, Received) {
        precondition(start == end, "reading past buffered bytes")
        while first < count && vectors[first].iov_len == 0 { first += 1 }
        guard first < count else { return (0, .failed(EINVAL)) }
        while true {
            var msg = msghdr()
            msg.msg_iov = vectors + first
            msg.msg_iovlen = min(count - first, StorageOperation.maxBuffers)
            let n = recvmsg(fd, &msg, Int32(MSG_DONTWAIT))
            if n > 0 {
                receives += 1
                IOVectors.advance(vectors, count, first: &first, by: n)
                return (n, .bytes)
            }
            if n == 0 { return (0, .endOfStream) }
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return (0, .nothingYet) }
            if e != EINTR { return (0, .failed(e)) }
        }
    }
}
