import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// The hypercall messages a process sends the hypervisor daemon, one per
/// `SOCK_SEQPACKET` record: a count of 64-bit words, the words (the first is
/// the operation or, in a reply, the outcome), an optional UTF-8 text, and up
/// to 16 descriptors passed with `SCM_RIGHTS`.
///
/// Only set-up travels this way (join, map, unmap, bind, unbind, the foreign
/// access dom0 needs for grant copy). The data path never does.
package enum DaemonOp: UInt64 {
    case join = 1
    case map = 2
    case unmap = 3
    case foreignAccess = 4
    case bindUnbound = 5
    case bindInterdomain = 6
    case peer = 7
    case unbind = 8
    case report = 9
    /// dom0 only: a guest domain waiting for the process that presents its token.
    case createDomain = 10
    /// A new share pool for the caller's pages shared with one peer (`SharePoolRegistry`).
    case sharePool = 11
    /// dom0 only: destroys a guest domain now (`xl destroy`), whether or not its process joined.
    case destroyDomain = 12
    /// A guest process hands over what tracks its writes to its memory for log-dirty:
    /// `[trackWrites, address, first frame, frames]` with its userfaultfd and
    /// `/proc/self/pagemap` (the first time), or without descriptors (a share pool it mapped).
    case trackWrites = 13
    /// dom0 only: `[logDirty, domid, action]`, action 1 start, 2 read-and-clear (the
    /// reply carries up to 256 nonzero words of the bitmap itself, `[0, frames, n,
    /// index, word, …]`, else the whole bitmap in a memfd, `[0, frames, words]`), 0 stop.
    case logDirty = 14
    /// A guest process asks to be suspended (`DomainSuspending`): `[suspend, timeout ms]`,
    /// answered when dom0 saved it elsewhere (`[0, 1, token high, token low]`, the
    /// destination socket in the text), or cancelled it (`[0, 0]`), or at the deadline
    /// with nobody taking it (`[0, 2]`).
    case suspend = 15
    /// dom0 only: `[transfer, domid, action, …]` on a domain being saved: 1 its state's
    /// descriptors, 2 whether its process waits suspended, 3 claim that suspend, 4 let
    /// it go to the destination (token, path in the text) and release it here, 5 cancel.
    case transfer = 16
    /// dom0 only: `[importDomain, action, domid, …]` a domain restored with the same id:
    /// 1 create (memory and table descriptors), 2 a share pool at a frame, 3 finish
    /// (its join token), 0 abort.
    case importDomain = 17
    /// A guest process that joined a restored domain takes over its share pools.
    case adoptPools = 18
}

/// One message: words, text, descriptors.
package struct WireMessage {
    package var words: [UInt64]
    package var text: String = ""
    package var fds: [Int32] = []

    package init(_ words: [UInt64], text: String = "", fds: [Int32] = []) {
        self.words = words
        self.text = text
        self.fds = fds
    }

    /// Largest record either side accepts (512 words are 4 KiB; a map of
    /// 256 refs fits with room for text).
    package static let maxBytes = 8192

    /// An error reply carrying a `HypervisorError`.
    package static func failure(_ error: HypervisorError) -> WireMessage {
        let (kind, value): (UInt64, UInt64) =
            switch error.code {
            case .grant(let s): (0, UInt64(bitPattern: Int64(s.rawValue)))
            case .errno(let e): (1, UInt64(bitPattern: Int64(e.rawValue)))
            case .busy: (2, 0)
            case .closed: (3, 0)
            }
        return WireMessage([1, kind, value], text: error.message)
    }

    /// The error of a failure reply, or nil for success (`words[0] == 0`).
    package var error: HypervisorError? {
        guard let outcome = words.first else { return HypervisorError(.closed, "empty reply from the hypervisor daemon") }
        if outcome == 0 { return nil }
        guard words.count >= 3 else { return HypervisorError(.closed, "malformed error from the hypervisor daemon") }
        switch words[1] {
        case 0: return .grant(GrantStatus(rawValue: Int16(truncatingIfNeeded: Int64(bitPattern: words[2]))), text)
        case 1: return .errno(.init(rawValue: Int32(truncatingIfNeeded: Int64(bitPattern: words[2]))), text)
        case 2: return HypervisorError(.busy, text)
        default: return HypervisorError(.closed, text)
        }
    }

    package func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + words.count * 8 + text.utf8.count)
        withUnsafeBytes(of: UInt32(words.count).littleEndian) { out.append(contentsOf: $0) }
        for w in words { withUnsafeBytes(of: w.littleEndian) { out.append(contentsOf: $0) } }
        out.append(contentsOf: text.utf8)
        return out
    }

    /// Decodes a record; nil for one that does not parse (its sender is broken or hostile).
    package static func decode(_ bytes: UnsafeRawBufferPointer, fds: [Int32]) -> WireMessage? {
        guard bytes.count >= 4 else { return nil }
        let n = Int(UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)))
        guard n <= (bytes.count - 4) / 8 else { return nil }
        var words: [UInt64] = []
        words.reserveCapacity(n)
        for i in 0..<n { words.append(UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 + i * 8, as: UInt64.self))) }
        let textBytes = UnsafeRawBufferPointer(rebasing: bytes[(4 + n * 8)...])
        return WireMessage(words, text: String(decoding: textBytes, as: UTF8.self), fds: fds)
    }
}

/// Sending and receiving whole records on a seqpacket socket.
package enum Wire {
    /// Sends `message`; the descriptors stay owned by the caller.
    package static func send(_ sock: Int32, _ message: WireMessage) -> Bool {
        let bytes = message.encoded()
        guard bytes.count <= WireMessage.maxBytes else { return false }
        let r = bytes.withUnsafeBytes { b in
            message.fds.withUnsafeBufferPointer { f in
                cxen_send_with_fds(sock, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            }
        }
        return r == bytes.count
    }

    /// Receives one record: nil at end of stream or on error. The caller owns
    /// the received descriptors (a record that does not parse has them closed).
    package static func receive(_ sock: Int32) -> WireMessage? {
        var buffer = [UInt8](repeating: 0, count: WireMessage.maxBytes)
        var fds = [Int32](repeating: -1, count: 16)
        var nfds: Int32 = 0
        let r = buffer.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { f in
                cxen_recv_with_fds(sock, b.baseAddress, b.count, f.baseAddress, Int32(f.count), &nfds)
            }
        }
        let got = Array(fds[0..<Int(max(0, nfds))])
        guard r > 0 else {
            for fd in got { Glibc.close(fd) }
            return nil
        }
        let decoded = buffer.withUnsafeBytes { WireMessage.decode(UnsafeRawBufferPointer(rebasing: $0[0..<r]), fds: got) }
        if decoded == nil { for fd in got { Glibc.close(fd) } }
        return decoded
    }
}

extension Wire {
    package enum Received {
        case message(WireMessage)
        /// Nothing there after all (a spurious wake-up).
        case wouldBlock
        /// End of stream, an error, or a record that does not parse.
        case closed
    }

    /// `receive` on a non-blocking socket, telling "nothing yet" from "gone".
    package static func receiveNonBlocking(_ sock: Int32) -> Received {
        errno = 0
        if let m = receive(sock) { return .message(m) }
        return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .closed
    }
}

/// `mmap(MAP_SHARED)` of a whole descriptor, and views of single frames.
package enum Mapping {
    package static func map(_ fd: Int32, bytes: Int, writable: Bool = true) throws(HypervisorError) -> UnsafeMutableRawPointer {
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        guard let p = mmap(nil, bytes, prot, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw .errno(Errno(rawValue: errno), "mmap of \(bytes) bytes from the hypervisor daemon")
        }
        return p
    }

    /// Maps one page from each `(fd, page index)` contiguously (a grant map's second view).
    package static func pages(_ sources: [(fd: Int32, page: Int)], writable: Bool) throws(HypervisorError) -> UnsafeMutableRawPointer {
        let length = sources.count * XenPage.size
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        // Reserve the run first so the pages land next to each other.
        guard let region = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), region != MAP_FAILED else {
            throw .errno(Errno(rawValue: errno), "reserving \(sources.count) pages for a grant map")
        }
        for (i, source) in sources.enumerated() {
            let p = mmap(region + i * XenPage.size, XenPage.size, prot, MAP_SHARED | MAP_FIXED, source.fd,
                         off_t(source.page) * off_t(XenPage.size))
            if p == nil || p == MAP_FAILED {
                let err = Errno(rawValue: errno)
                munmap(region, length)
                throw .errno(err, "mmap of a granted frame")
            }
        }
        return region
    }
}
