import Glibc

/// The transmission phase's reads from a client, through a buffer: one `recv` takes every
/// request header (and small write payload) already on the socket, where reading each
/// header and each payload on its own cost two system calls per write request and one per
/// read request. A client that keeps 32 requests in flight usually has several waiting.
/// Payloads larger than what is buffered are read straight into their own buffers.
///
/// Only the reader thread uses it. Reads that find nothing wait in `poll`, never in a
/// blocking `recv` (see ``ExportSocket/awaitInput(_:)``).
struct ExportInput: ~Copyable {
    static let capacity = 64 << 10

    private let fd: Int32
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    /// The buffered bytes not yet taken: `start..<end`.
    private var start = 0
    private var end = 0
    /// `recv` calls that returned bytes, for tests.
    private(set) var receives = 0

    init(fd: Int32) { self.fd = fd }

    deinit { buffer.deallocate() }

    /// Bytes buffered and not yet taken.
    var buffered: Int { end - start }

    /// Whether a request is waiting: bytes buffered, or on the socket (or its end or an
    /// error, which the next read then sees).
    var hasInput: Bool { buffered > 0 || ExportSocket.hasInput(fd) }

    /// Copies the next `count` bytes into `destination`, waiting for them; false at the end
    /// of the stream or on an error. `count` bytes no larger than a few pages go through the
    /// buffer (one `recv` may bring more requests with them); larger ones are read directly
    /// once the buffered part is copied.
    mutating func read(into destination: UnsafeMutableRawPointer, count: Int) -> Bool {
        var done = min(count, buffered)
        destination.copyMemory(from: buffer.baseAddress! + start, byteCount: done)
        start += done
        if done == count { return true }
        // The buffer is empty here (fill starts it over).
        if count - done > Self.capacity / 4 {
            return ExportSocket.readFully(fd, destination + done, count - done)
        }
        while done < count {
            guard fill() else { return false }
            let n = min(count - done, buffered)
            (destination + done).copyMemory(from: buffer.baseAddress! + start, byteCount: n)
            start += n
            done += n
        }
        return true
    }

    /// Reads into the empty buffer whatever the socket holds, waiting in `poll` while it
    /// holds nothing; false at the end of the stream or on an error.
    private mutating func fill() -> Bool {
        start = 0
        end = 0
        while true {
            let n = recv(fd, buffer.baseAddress!, Self.capacity, Int32(MSG_DONTWAIT))
            if n > 0 {
                end = n
                receives += 1
                return true
            }
            if n == 0 { return false }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                guard ExportSocket.awaitInput(fd) else { return false }
            } else if errno != EINTR {
                return false
            }
        }
    }
}
