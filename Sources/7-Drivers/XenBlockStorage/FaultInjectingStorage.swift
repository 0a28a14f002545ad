import SystemPackage

/// Wraps an engine and fails chosen operations with an error instead of passing them
/// on, so a backend can show that one failed request fails alone.
///
/// Failed operations never reach the inner engine; their completions come back through
/// the same ``reap(into:timeout:)`` and the inner engine's completion descriptor.
public final class FaultInjectingStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: confined like the engine it wraps.

    /// Which operations to fail.
    public enum Fault: Sendable {
        /// The n-th operation submitted through this wrapper (1-based).
        case nth(Int)
        /// Every read or write or discard whose byte range overlaps this one.
        case overlapping(Range<UInt64>)
        /// Every operation of this kind.
        case kind(StorageOperation.Kind)
    }

    /// The engine that does the operations not failed; closed by ``close()``.
    public let inner: any StorageEngine
    /// The faults in force; may be changed between submits.
    public var faults: [Fault]
    /// The error injected (default: EIO, as a failing disk reports).
    public var injectedError: StorageError
    /// Operations submitted so far (what ``Fault/nth(_:)`` counts).
    public private(set) var submittedCount = 0
    /// Operations failed so far.
    public private(set) var injectedCount = 0

    /// The inner engine's size.
    public var byteCount: UInt64 { inner.byteCount }
    /// Whether the inner engine is read-only.
    public var isReadOnly: Bool { inner.isReadOnly }
    /// The inner engine's alignment.
    public var alignment: Int { inner.alignment }
    /// The inner engine's queue depth, shared by failed and passed operations.
    public var queueDepth: Int { inner.queueDepth }
    /// The inner engine's outstanding operations plus injected failures not yet reaped.
    public var outstanding: Int { inner.outstanding + failed.count }
    /// The inner engine's descriptor, which this wrapper also signals for its injected failures.
    public var completionDescriptor: FileDescriptor { inner.completionDescriptor }
    /// Whether the inner engine prefers contiguous buffers.
    public var prefersContiguousBuffers: Bool { inner.prefersContiguousBuffers }
    /// True while an injected failure waits to be reaped, else the inner engine's answer.
    public var mayHaveCompletions: Bool { !failed.isEmpty || inner.mayHaveCompletions }
    /// The inner engine's registration.
    public func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int? { inner.registerBuffer(memory) }
    /// Forgets the inner engine's registration.
    public func unregisterBuffer(_ registration: Int) { inner.unregisterBuffer(registration) }

    private var failed: CompletionQueue

    /// Wraps `inner`, failing the operations `faults` select with `error` (EIO by default).
    public init(_ inner: any StorageEngine, faults: [Fault],
                error: StorageError = StorageError(.io(.ioError), "injected fault")) {
        self.inner = inner
        self.faults = faults
        self.injectedError = error
        failed = CompletionQueue(capacity: inner.queueDepth)
    }

    private func shouldFail(_ op: StorageOperation, ordinal: Int) -> Bool {
        faults.contains { fault in
            switch fault {
            case .nth(let n): return ordinal == n
            case .kind(let k): return op.kind == k
            case .overlapping(let r):
                let length = op.kind == .discard ? op.length : op.transferLength
                guard op.kind != .flush, length > 0 else { return false }
                let end = op.offset.addingReportingOverflow(length)
                return op.offset < r.upperBound && (end.overflow || end.partialValue > r.lowerBound)
            }
        }
    }

    /// Accepts a prefix of `operations` as ``StorageEngine/submit(_:)`` does: runs that pass go to the inner engine in one call each, selected ones complete at once with ``injectedError``. Throws what the inner engine throws.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        let room = min(operations.count, queueDepth - outstanding)
        var i = 0
        var injected = false
        while i < room {
            // A run of operations that pass goes to the inner engine in one submit.
            var end = i
            while end < room && !shouldFail(operations[end], ordinal: submittedCount + 1 + end - i) { end += 1 }
            if end > i {
                let run = UnsafeBufferPointer(rebasing: operations[i..<end])
                let taken = try inner.submit(run)
                submittedCount += taken
                i += taken
                if taken < run.count { break }
            }
            if i < room && i == end {
                submittedCount += 1
                injectedCount += 1
                failed.push(StorageCompletion(tag: operations[i].tag, outcome: .failure(injectedError)))
                injected = true
                i += 1
            }
        }
        if injected { CompletionSignal.signal(completionDescriptor) }
        return i
    }

    /// Returns injected failures first, then the inner engine's completions (waiting up to `timeout` only if there were none).
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        var n = failed.drain(into: completions, from: 0)
        if n < completions.count {
            let rest = UnsafeMutableBufferPointer(rebasing: completions[n...])
            n += try inner.reap(into: rest, timeout: n > 0 ? .zero : timeout)
        }
        // The inner reap drained the shared descriptor; left-overs must wake the poller again.
        if !failed.isEmpty { CompletionSignal.signal(completionDescriptor) }
        return n
    }

    /// Closes the inner engine.
    public func close() { inner.close() }
}
