import Glibc
import NBDProtocol
import XenSockets

/// Sends a batch of NBD requests in as few `sendmsg` calls as it takes: every header and
/// every write's data of the batch gathered into one vector (up to `IOV_MAX` entries a
/// call), where sending each request on its own cost one system call per request. Its
/// header and vector space is allocated once; one thread at a time uses a writer.
struct NBDRequestWriter: ~Copyable {
    /// Requests whose headers one gathered send holds.
    static let headerCapacity = 256
    /// A write's data takes at most `IOV_MAX` entries and its header one: a gathered send
    /// always has room for one more request of any size when it has `IOV_MAX + 1` left.
    static let vectorCapacity = 2 * StorageOperation.maxBuffers + 1

    private let headers = UnsafeMutableRawPointer.allocate(byteCount: headerCapacity * NBDRequest.size, alignment: 8)
    private let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: vectorCapacity)
    /// `sendmsg` calls made, for tests.
    private(set) var sends = 0

    init() {}

    deinit {
        headers.deallocate()
        vectors.deallocate()
    }

    /// Sends every part of `parts` in order; false when the peer went away (the caller
    /// shuts the socket down). No `SIGPIPE`: `MSG_NOSIGNAL`.
    mutating func send(_ parts: UnsafeBufferPointer<NBDStorage.Part>, on fd: Int32) -> Bool {
        var next = 0
        while next < parts.count {
            var used = 0
            var headerCount = 0
            while next < parts.count && headerCount < Self.headerCapacity
                && used + 1 + Self.dataVectors(parts[next]) <= Self.vectorCapacity {
                let header = headers + headerCount * NBDRequest.size
                Self.encodeHeader(parts[next], into: header)
                vectors[used] = iovec(iov_base: header, iov_len: NBDRequest.size)
                used += 1
                if parts[next].command == .write { used += parts[next].dataVectors(into: vectors + used) }
                headerCount += 1
                next += 1
            }
            // MSG_MORE: the rest of the batch follows at once; on TCP the kernel holds a
            // partial segment back for it.
            let flags = Int32(MSG_NOSIGNAL) | (next < parts.count ? Int32(MSG_MORE) : 0)
            guard sendAll(fd, used, flags: flags) else { return false }
        }
        return true
    }

    /// The most vector entries a part's data takes.
    private static func dataVectors(_ part: NBDStorage.Part) -> Int {
        part.command == .write && part.buffers != nil ? part.bufferCount : 0
    }

    private static func encodeHeader(_ part: NBDStorage.Part, into header: UnsafeMutableRawPointer) {
        let h = UnsafeMutableRawBufferPointer(start: header, count: NBDRequest.size)
        h.storeBytes(of: NBDMagic.request.bigEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: part.flags.rawValue.bigEndian, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: part.command.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: part.handle.bigEndian, toByteOffset: 8, as: UInt64.self)
        h.storeBytes(of: part.offset.bigEndian, toByteOffset: 16, as: UInt64.self)
        h.storeBytes(of: part.length.bigEndian, toByteOffset: 24, as: UInt32.self)
    }

    /// `sendmsg` until every byte of the first `count` vectors is out, advancing them in
    /// place (at most `IOV_MAX` vectors per call).
    private mutating func sendAll(_ fd: Int32, _ count: Int, flags: Int32) -> Bool {
        var first = 0
        while first < count {
            var msg = msghdr()
            msg.msg_iov = vectors + first
            msg.msg_iovlen = min(count - first, StorageOperation.maxBuffers)
            let n = sendmsg(fd, &msg, flags)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            sends += 1
            IOVectors.advance(vectors, count, first: &first, by: n)
        }
        return true
    }
}
