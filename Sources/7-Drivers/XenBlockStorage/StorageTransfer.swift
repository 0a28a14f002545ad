import Glibc
import SystemPackage
import XenSockets

/// What both file engines share about reads and writes: dropping the part of an
/// operation's buffers a short transfer covered, and a transfer done in the calling thread.
enum StorageTransfer {
    /// Drops the first `bytes` of the `count` iovecs at `buffers`, rewriting the operation's
    /// array in place (StorageOperation's contract allows it): `buffers` moves past the
    /// entries they cover whole, and the entry they end in starts later.
    static func advance(_ buffers: inout UnsafeMutablePointer<iovec>?, count: inout Int, by bytes: Int) {
        guard let vectors = buffers else { return }
        var first = 0
        IOVectors.advance(vectors, count, first: &first, by: bytes)
        buffers = vectors + first
        count -= first
    }

    /// `op`, a read or a write, with `preadv` or `pwritev` on `fd` in the calling thread,
    /// for an image open through the page cache (the engines' overviews say why): a short
    /// transfer goes on from where it stopped, one that makes no progress fails.
    static func now(_ op: StorageOperation, fd: FileDescriptor, path: FilePath) -> StorageCompletion.Outcome {
        let isWrite = op.kind == .write
        let total = Int(op.transferLength)
        var buffers = op.buffers, count = op.bufferCount, done = 0
        while done < total {
            let offset = off_t(op.offset) + off_t(done)
            let n = isWrite ? pwritev(fd.rawValue, buffers, Int32(count), offset) : preadv(fd.rawValue, buffers, Int32(count), offset)
            if n < 0 && errno == EINTR { continue }
            let call = isWrite ? "pwritev" : "preadv"
            if n < 0 {
                return .failure(StorageError(.io(Errno(rawValue: errno)), "\(call) of \(total) bytes at \(op.offset) on \(path)"))
            }
            if n == 0 {
                return .failure(StorageError(.io(.ioError), "\(call) stopped at \(done) of \(total) bytes at \(op.offset) on \(path)"))
            }
            done += n
            advance(&buffers, count: &count, by: n)
        }
        return .success(bytes: total)
    }
}
