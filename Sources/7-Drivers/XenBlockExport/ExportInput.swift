import Glibc
import XenSockets

/// The transmission phase's reads from a client, through a buffer (`StreamInput`): one
/// `recv` takes every request header (and small write payload) already on the socket,
/// where reading each header and each payload on its own cost two system calls per write
/// request and one per read request. A client that keeps 32 requests in flight usually
/// has several waiting. Payloads larger than what is buffered are read straight into
/// their own buffers.
///
/// It never waits: a read says how far it got, and whoever takes the connection's input
/// (the device's queue thread, or the connection's own) comes back when the socket is
/// readable. A `recv` that got less than it had room for read the socket dry, so the next
/// look says `.waiting` without the `recv` that would only fail with `EAGAIN` (the owner
/// waits for readability, level-triggered, so bytes that came since are not missed): at
/// queue depth 32 the export's queue thread made 1.7 `recv`s per write request, one of
/// them that empty one. One thread at a time uses it.
struct ExportInput: ~Copyable {
    static let capacity = 64 << 10

    private let fd: Int32
    private var input = StreamInput(capacity: capacity)

    /// How far a read got.
    enum Progress: Equatable {
        /// Every byte asked for.
        case done
        /// The socket holds nothing more now: come back when it is readable.
        case waiting
        /// The stream ended (or failed) first.
        case ended
    }

    init(fd: Int32) { self.fd = fd }

    /// `recv` calls that returned bytes, for tests.
    var receives: Int { input.receives }
    /// `recv` calls that found nothing, for tests.
    var dryReceives: Int { input.dryReceives }
    /// The last `recv` read the socket dry: the next look waits without one.
    private var dry = false

    /// Bytes buffered and not yet taken.
    var buffered: Int { input.buffered }

    /// The buffered bytes (valid until the next mutating call).
    var bytes: UnsafeRawBufferPointer { input.bytes }

    /// Takes `count` buffered bytes.
    mutating func consume(_ count: Int) { input.consume(count) }

    /// Buffers at least `count` bytes (a header: far less than the buffer holds), receiving
    /// what the socket holds; ``bytes`` then starts with them.
    mutating func buffer(_ count: Int) -> Progress {
        while input.buffered < count {
            guard let p = receive() else { continue }
            return p
        }
        return .done
    }

    /// Copies the next bytes into `destination + done` (nil: drops them) until `done` is
    /// `count`, advancing `done`. Up to a few pages go through the buffer (one `recv` may
    /// bring the next requests with them); more are read straight into `destination`
    /// once the buffered part is copied.
    mutating func fill(_ destination: UnsafeMutableRawPointer?, count: Int, done: inout Int) -> Progress {
        while true {
            if let destination {
                done += input.copy(into: destination + done, count: count - done)
            } else {
                let n = min(count - done, input.buffered)
                input.consume(n)
                done += n
            }
            if done == count { return .done }
            // The buffer is empty here.
            if dry {
                dry = false
                return .waiting
            }
            if let destination, count - done > Self.capacity / 4 {
                var vector = iovec(iov_base: destination + done, iov_len: count - done)
                var first = 0
                let (n, received) = input.receiveDirect(fd, into: &vector, 1, first: &first)
                done += n
                dry = input.readDry
                if let p = Self.progress(received) { return p }
                continue
            }
            if let p = receive() { return p }
        }
    }

    /// Appends what the socket holds: nil if it brought bytes, else how the read stands
    /// (`.waiting` without a `recv` if the last one read it dry).
    private mutating func receive() -> Progress? {
        if dry {
            dry = false
            return .waiting
        }
        let received = input.receive(fd)
        dry = input.readDry
        return Self.progress(received)
    }

    private static func progress(_ received: StreamInput.Received) -> Progress? {
        switch received {
        case .bytes: nil
        case .nothingYet: .waiting
        case .endOfStream, .failed: .ended
        }
    }
}
