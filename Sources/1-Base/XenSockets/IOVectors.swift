import Glibc

/// Progress through an array of `iovec`s that a short `sendmsg` or `recvmsg` (or a copy)
/// only partly covered.
public enum IOVectors {
    /// Drops the first `bytes` bytes of `vectors[first..<count]` in place: `first` moves
    /// past the entries they cover whole, and the entry they end in starts later.
    public static func advance(_ vectors: UnsafeMutablePointer<iovec>, _ count: Int, first: inout Int, by bytes: Int) {
        var left = bytes
        while first < count && left >= vectors[first].iov_len {
            left -= vectors[first].iov_len
            first += 1
        }
        if left > 0 {
            vectors[first].iov_base += left
            vectors[first].iov_len -= left
        }
    }
}
