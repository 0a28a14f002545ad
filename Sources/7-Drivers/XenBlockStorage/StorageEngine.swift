import CBlockStorage
import Glibc
import SystemPackage

/// One I/O for a storage engine: a read or write of caller-owned buffers at a byte
/// offset, a flush, or a discard. A plain value: building one never allocates.
///
/// The `iovec` array and the memory it points to belong to the engine from `submit`
/// until this operation's completion is reaped; the engine may rewrite the array in
/// place (it advances it after a short transfer, as a `preadv` loop would).
public struct StorageOperation {
    /// What an operation does.
    public enum Kind: Hashable, Sendable {
        /// `read` and `write` move bytes between ``buffers`` and the device at ``offset``; `flush` makes completed writes durable; `discard` drops ``length`` bytes at ``offset``.
        case read, write, flush, discard
    }

    /// What the operation does.
    public var kind: Kind
    /// The caller's value, returned in the completion (e.g. a request slot index).
    public var tag: UInt64
    /// Byte offset into the device (read, write, discard).
    public var offset: UInt64
    /// Bytes to discard (discard only; reads and writes take the sum of their buffers).
    public var length: UInt64
    /// The buffers of a read or write; nil otherwise.
    public var buffers: UnsafeMutablePointer<iovec>?
    /// Entries in ``buffers``, at most ``maxBuffers``.
    public var bufferCount: Int

    /// An operation from its fields; the named constructors (``read(tag:offset:buffers:)`` and the others) fill them for each kind.
    public init(kind: Kind, tag: UInt64, offset: UInt64 = 0, length: UInt64 = 0,
                buffers: UnsafeMutablePointer<iovec>? = nil, bufferCount: Int = 0) {
        self.kind = kind
        self.tag = tag
        self.offset = offset
        self.length = length
        self.buffers = buffers
        self.bufferCount = bufferCount
    }

    /// Read into `buffers` (in order) from `offset`.
    public static func read(tag: UInt64, offset: UInt64, buffers: UnsafeMutableBufferPointer<iovec>) -> Self {
        Self(kind: .read, tag: tag, offset: offset, buffers: buffers.baseAddress, bufferCount: buffers.count)
    }

    /// Write `buffers` (in order) at `offset`.
    public static func write(tag: UInt64, offset: UInt64, buffers: UnsafeMutableBufferPointer<iovec>) -> Self {
        Self(kind: .write, tag: tag, offset: offset, buffers: buffers.baseAddress, bufferCount: buffers.count)
    }

    /// Make every write completed before it durable (`fdatasync`).
    public static func flush(tag: UInt64) -> Self { Self(kind: .flush, tag: tag) }

    /// Forget `length` bytes at `offset`; they read back as zeros.
    public static func discard(tag: UInt64, offset: UInt64, length: UInt64) -> Self {
        Self(kind: .discard, tag: tag, offset: offset, length: length)
    }

    /// The most buffers one read or write may have: `IOV_MAX`, the limit of `preadv`
    /// (an indirect blkif request of up to 4096 segments must be split or merged).
    public static let maxBuffers = Int(cbs_iov_max)

    /// Bytes a read or write moves: the sum of its buffers (saturating, never trapping).
    public var transferLength: UInt64 {
        guard let buffers else { return 0 }
        var total: UInt64 = 0
        for i in 0..<bufferCount {
            let (sum, overflow) = total.addingReportingOverflow(UInt64(buffers[i].iov_len))
            total = overflow ? .max : sum
        }
        return total
    }
}

/// The end of one operation: its tag and what happened.
public struct StorageCompletion: Sendable {
    /// Whether the operation succeeded and how many bytes it moved, or why it failed.
    public enum Outcome: Sendable {
        /// Done; `bytes` moved (the full length for reads and writes, 0 for flush/discard).
        case success(bytes: Int)
        /// Failed; the operation may have moved some bytes. Other operations are not affected.
        case failure(StorageError)
    }

    /// The ``StorageOperation/tag`` of the operation that ended.
    public var tag: UInt64
    /// How it ended.
    public var outcome: Outcome

    /// A completion of the operation tagged `tag`.
    public init(tag: UInt64, outcome: Outcome) {
        self.tag = tag
        self.outcome = outcome
    }

    /// An empty value to pre-fill completion arrays with.
    public static let empty = StorageCompletion(tag: 0, outcome: .success(bytes: 0))

    /// True when the outcome is `.success`.
    public var succeeded: Bool {
        if case .success = outcome { true } else { false }
    }

    /// The failure, or nil on success.
    public var error: StorageError? {
        if case .failure(let e) = outcome { e } else { nil }
    }
}

/// A storage engine a backend queue thread drives in batches.
///
/// The thread submits what it drained from the ring, then sleeps in one `poll` over
/// the event channel and ``completionDescriptor``, and reaps when the latter is
/// readable. Every accepted operation yields exactly one completion, through
/// ``reap(into:timeout:)``, including operations refused on the spot (misaligned,
/// out of range, read-only) and ones done synchronously (flush, discard).
///
/// Engines are not thread-safe: one thread at a time drives one engine.
public protocol StorageEngine: AnyObject {
    /// Device size in bytes.
    var byteCount: UInt64 { get }
    /// Writes and discards fail with ``StorageError/Code-swift.enum/readOnly``.
    var isReadOnly: Bool { get }
    /// Alignment, in bytes, every buffer address, buffer length and offset of a read or
    /// write must have (1: none). `O_DIRECT` needs the logical block size, usually 512.
    var alignment: Int { get }
    /// Operations that may be outstanding (submitted, not yet reaped).
    var queueDepth: Int { get }
    /// Operations submitted and not yet reaped.
    var outstanding: Int { get }
    /// An eventfd that is readable whenever ``reap(into:timeout:)`` has something to return
    /// (it may also wake spuriously). Owned by the engine.
    var completionDescriptor: FileDescriptor { get }

    /// Accepts a prefix of `operations`, at most `queueDepth - outstanding`, and returns
    /// how many; submit the rest after reaping. Throws only when the engine itself is
    /// unusable (closed); a bad operation fails alone, through its completion.
    func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int

    /// Moves finished operations into `completions` and returns how many. When none is
    /// ready it waits up to `timeout` for one (`.zero`: does not wait).
    func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int

    /// Releases the engine. Outstanding operations are waited for (bounded) and dropped.
    func close()

    /// Whether a read or write costs less in one physically contiguous buffer than
    /// scattered over pages: true where buffers go to a device as scatter-gather lists
    /// (`O_DIRECT`); a caller may then copy through contiguous memory (blkback does).
    var prefersContiguousBuffers: Bool { get }

    /// Whether ``reap(into:timeout:)`` may have something to return, answered without a
    /// system call where the engine can: for a thread that polls. False only when there
    /// is nothing. It does not reset ``completionDescriptor``: sleep on that only after a
    /// reap found nothing.
    var mayHaveCompletions: Bool { get }

    /// Tells the engine that `memory` stays mapped, at this address, until
    /// ``unregisterBuffer(_:)``: an engine may then prepare it once instead of for every
    /// operation (io_uring pins it as a registered buffer, and a read or write inside it
    /// goes as `IORING_OP_READ_FIXED`/`WRITE_FIXED`). Returns the registration, or nil when
    /// the engine does not register buffers or could not (nothing changes then: operations
    /// on that memory work as before).
    func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int?

    /// Forgets a registration made by ``registerBuffer(_:)``; the caller may unmap the
    /// memory afterwards. No operation on it may be outstanding. Nothing after ``close()``.
    func unregisterBuffer(_ registration: Int)
}

extension StorageEngine {
    /// Nil: by default an engine prepares every operation's memory afresh.
    public func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int? { nil }

    /// Nothing to forget by default.
    public func unregisterBuffer(_ registration: Int) {}

    /// False: by default an engine takes scattered buffers as cheaply as contiguous ones.
    public var prefersContiguousBuffers: Bool { false }

    /// Asks ``completionDescriptor`` (a `poll` system call).
    public var mayHaveCompletions: Bool {
        var pfd = pollfd(fd: completionDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) != 0
    }
}

extension Duration {
    /// Whole nanoseconds, saturating (negative becomes zero).
    var clampedNanoseconds: Int64 {
        let (s, a) = components
        if s < 0 { return 0 }
        if s >= Int64.max / 1_000_000_000 - 1 { return .max }
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
