import SystemPackage
import XenBlockStorage

/// A test engine that wraps another and passes on whatever it does not change itself: a
/// wrapper implements only the members it plays with.
protocol ForwardingStorage: StorageEngine {
    var inner: any StorageEngine { get }
}

extension ForwardingStorage {
    var byteCount: UInt64 { inner.byteCount }
    var isReadOnly: Bool { inner.isReadOnly }
    var alignment: Int { inner.alignment }
    var queueDepth: Int { inner.queueDepth }
    var outstanding: Int { inner.outstanding }
    var completionDescriptor: FileDescriptor { inner.completionDescriptor }
    var prefersContiguousBuffers: Bool { inner.prefersContiguousBuffers }
    var mayHaveCompletions: Bool { inner.mayHaveCompletions }
    func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int { try inner.submit(operations) }
    func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        try inner.reap(into: completions, timeout: timeout)
    }
    func close() { inner.close() }
    func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int? { inner.registerBuffer(memory) }
    func unregisterBuffer(_ registration: Int) { inner.unregisterBuffer(registration) }
}
