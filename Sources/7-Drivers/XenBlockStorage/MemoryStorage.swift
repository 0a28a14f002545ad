import Glibc
import SystemPackage

/// An in-memory disk with the same contract as ``LibaioStorage``: operations finish
/// during `submit` and come back through ``reap(into:timeout:)`` and the completion
/// descriptor, discarded bytes read back as zeros, read-only refuses writes, and an
/// `alignment` above 1 refuses misaligned buffers as `O_DIRECT` would.
public final class MemoryStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: confined. One queue thread drives it at a time (StorageEngine's rule);
    // it may be handed to that thread.

    /// The disk's size, fixed at init.
    public let byteCount: UInt64
    /// True when writes and discards are refused with ``StorageError/Code-swift.enum/readOnly``.
    public let isReadOnly: Bool
    /// The alignment in bytes checked on every read and write, as `O_DIRECT` would (1: none).
    public let alignment: Int
    /// Operations that may be outstanding.
    public let queueDepth: Int
    /// Operations submitted and not yet reaped (all of them already done).
    public private(set) var outstanding = 0
    /// An eventfd, readable while completions wait to be reaped.
    public var completionDescriptor: FileDescriptor { signal.descriptor }
    /// True while completions wait to be reaped; no system call.
    public var mayHaveCompletions: Bool { !ready.isEmpty }

    private let bytes: UnsafeMutableRawBufferPointer
    private let signal: CompletionSignal
    private var ready: CompletionQueue
    private var closed = false

    /// A zero-filled disk of `byteCount` bytes.
    public init(byteCount: Int, readOnly: Bool = false, alignment: Int = 1, queueDepth: Int = 64) throws(StorageError) {
        precondition(byteCount >= 0 && alignment >= 1 && alignment & (alignment - 1) == 0 && queueDepth >= 1)
        self.byteCount = UInt64(byteCount)
        self.isReadOnly = readOnly
        self.alignment = alignment
        self.queueDepth = queueDepth
        bytes = .allocate(byteCount: max(byteCount, 1), alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        signal = try CompletionSignal()
        ready = CompletionQueue(capacity: queueDepth)
    }

    deinit {
        close()
        bytes.deallocate()
    }

    /// The disk's bytes, for tests to seed or inspect (not while operations are outstanding).
    public func withContents<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(rebasing: bytes[0..<Int(byteCount)]))
    }

    /// Performs a prefix of `operations` (at most `queueDepth - outstanding`) at once, copying between the disk and the buffers, and queues their completions. Throws `.closed` after ``close()``.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "memory storage is closed") }
        let accepted = min(operations.count, queueDepth - outstanding)
        for i in 0..<accepted {
            let op = operations[i]  // an index loop: generic slice iteration allocates in debug builds
            ready.push(StorageCompletion(tag: op.tag, outcome: perform(op)))
        }
        outstanding += accepted
        if accepted > 0 { signal.signal() }
        return accepted
    }

    private func perform(_ op: StorageOperation) -> StorageCompletion.Outcome {
        if let refusal = StorageChecks.refusal(op, byteCount: byteCount, readOnly: isReadOnly, alignment: alignment) {
            return .failure(refusal)
        }
        switch op.kind {
        case .flush:
            return .success(bytes: 0)
        case .discard:
            let start = Int(op.offset)
            UnsafeMutableRawBufferPointer(rebasing: bytes[start..<start + Int(op.length)]).initializeMemory(as: UInt8.self, repeating: 0)
            return .success(bytes: 0)
        case .read, .write:
            var position = Int(op.offset)
            for i in 0..<op.bufferCount {
                let iov = op.buffers![i]
                guard iov.iov_len > 0, let base = iov.iov_base else { continue }
                // SAFETY: the range was checked against byteCount; the caller lends the buffer.
                if op.kind == .read {
                    base.copyMemory(from: bytes.baseAddress! + position, byteCount: iov.iov_len)
                } else {
                    (bytes.baseAddress! + position).copyMemory(from: base, byteCount: iov.iov_len)
                }
                position += iov.iov_len
            }
            return .success(bytes: position - Int(op.offset))
        }
    }

    /// Moves queued completions into `completions`; with none queued, sleeps up to `timeout` (nothing can finish meanwhile on the one driving thread). Throws `.closed` after ``close()``.
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "memory storage is closed") }
        signal.drain()
        // Everything finished in submit: waiting can only be for another thread's submit,
        // which the engine's one-thread rule excludes, so a wait is a bounded sleep.
        if ready.isEmpty && timeout > .zero { _ = signal.wait(timeout) }
        let n = ready.drain(into: completions, from: 0)
        outstanding -= n
        if !ready.isEmpty { signal.signal() }  // the caller's array was full: come back
        return n
    }

    /// Refuses further submits and reaps and closes the completion descriptor; the bytes live until deinit.
    public func close() {
        guard !closed else { return }
        closed = true
        signal.close()
    }
}
