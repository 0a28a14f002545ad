import Glibc
import XenSockets

/// The transmission phase's reads from a client, through a buffer (`StreamInput`): one
/// `recv` takes every request header (and small write payload) already on the socket,
/// where reading each header and each payload on its own cost two system calls per write
/// request and one per read request. A client that keeps 32 requests in flight usually
/// has several waiting. Payloads larger than what is buffered are read straight into
/// their own buffers.
///
/// Only the reader thread uses it. Reads that find nothing wait in `poll`, never in a
/// blocking `recv` (see ``ExportSocket/awaitInput(_:)``).
struct ExportInput: ~Copyable {
    static let capacity = 64 << 10

    private let fd: Int32
    private var input = StreamInput(capacity: capacity)

    init(fd: Int32) { self.fd = fd }

    /// `recv` calls that returned bytes, for tests.
    var receives: Int { input.receives }

    /// Bytes buffered and not yet taken.
    var buffered: Int { input.buffered }

    /// Whether a request is waiting: bytes buffered, or on the socket (or its end or an
    /// error, which the next read then sees).
    var hasInput: Bool { input.buffered > 0 || ExportSocket.hasInput(fd) }

    /// Copies the next `count` bytes into `destination` (nil: drops them), waiting for them;
    /// false at the end of the stream or on an error. `count` bytes no larger than a few
    /// pages go through the buffer (one `recv` may bring more requests with them); larger
    /// ones are read directly once the buffered part is copied.
    mutating func read(into destination: UnsafeMutableRawPointer?, count: Int) -> Bool {
        var done = 0
        while true {
            if let destination {
                done += input.copy(into: destination + done, count: count - done)
            } else {
                let n = min(count - done, input.buffered)
                input.consume(n)
                done += n
            }
            if done == count { return true }
            // The buffer is empty here.
            if let destination, count - done > Self.capacity / 4 {
                return ExportSocket.readFully(fd, destination + done, count - done)
            }
            guard fill() else { return false }
        }
    }

    /// Receives what the socket holds, waiting in `poll` while it holds nothing; false at
    /// the end of the stream or on an error.
    private mutating func fill() -> Bool {
        while true {
            switch input.receive(fd) {
            case .bytes: return true
            case .nothingYet: guard ExportSocket.awaitInput(fd) else { return false }
            case .endOfStream, .failed: return false
            }
        }
    }
}
