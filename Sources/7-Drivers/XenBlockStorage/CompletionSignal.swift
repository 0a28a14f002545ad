import CXen
import Glibc
import SystemPackage

/// A non-blocking eventfd used as an engine's completion descriptor: signalled when a
/// completion becomes ready, drained at the start of each reap. Draining first and
/// collecting second means a completion that lands in between leaves the counter
/// set, so the next poll wakes (at worst spuriously) and nothing is missed.
final class CompletionSignal {
    let descriptor: FileDescriptor

    init() throws(StorageError) {
        let fd = cxen_eventfd(0, 1)
        guard fd >= 0 else { throw StorageError(.io(Errno(rawValue: errno)), "eventfd for completions") }
        descriptor = FileDescriptor(rawValue: fd)
    }

    /// Adds one to the counter (makes the descriptor readable).
    static func signal(_ fd: FileDescriptor) {
        var one: UInt64 = 1
        // The counter cannot overflow in practice (2^64 - 2 signals); EAGAIN would mean
        // it is already readable, which is all a signal is for.
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
    }

    func signal() { Self.signal(descriptor) }

    /// Resets the counter to zero (non-blocking; nothing to read is fine).
    func drain() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(descriptor.rawValue, $0.baseAddress, 8) }
    }

    /// Waits up to `timeout` for the descriptor to become readable; true if it did.
    func wait(_ timeout: Duration) -> Bool {
        var pfd = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
        let ms = Int32(clamping: (timeout.clampedNanoseconds + 999_999) / 1_000_000)
        return poll(&pfd, 1, ms) > 0
    }

    func close() { try? descriptor.close() }
}

/// A fixed-capacity FIFO of completions, allocated once: the engines' list of
/// operations that finished without the kernel's completion queue.
struct CompletionQueue: ~Copyable {
    private let storage: UnsafeMutablePointer<StorageCompletion>
    private let capacity: Int
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        storage = .allocate(capacity: self.capacity)
        storage.initialize(repeating: .empty, count: self.capacity)
    }

    deinit {
        storage.deinitialize(count: capacity)
        storage.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// Appends; the engines never hold more than their queue depth, so a full queue is our bug.
    mutating func push(_ c: StorageCompletion) {
        precondition(count < capacity, "completion queue overflow: more outstanding operations than the queue depth")
        storage[(head + count) % capacity] = c
        count += 1
    }

    mutating func pop() -> StorageCompletion? {
        guard count > 0 else { return nil }
        let c = storage[head]
        storage[head] = .empty
        head = (head + 1) % capacity
        count -= 1
        return c
    }

    /// Moves up to `out.count - start` completions into `out` from `start`; returns the new fill.
    mutating func drain(into out: UnsafeMutableBufferPointer<StorageCompletion>, from start: Int) -> Int {
        var n = start
        while n < out.count, let c = pop() {
            out[n] = c
            n += 1
        }
        return n
    }
}

/// The checks every engine applies before touching storage, so all engines refuse the
/// same operations with the same errors.
enum StorageChecks {
    /// `IOV_MAX` (`UIO_MAXIOV`): the most buffers `preadv`/`pwritev` take in one call.
    static let maxBuffers = StorageOperation.maxBuffers

    /// Nil when `op` may proceed on a device of `byteCount` bytes.
    static func refusal(_ op: StorageOperation, byteCount: UInt64, readOnly: Bool, alignment: Int) -> StorageError? {
        switch op.kind {
        case .flush:
            return nil
        case .discard:
            if readOnly { return StorageError(.readOnly, "discard on a read-only device") }
            return rangeRefusal(op.offset, op.length, byteCount, op.kind)
        case .read, .write:
            if op.kind == .write && readOnly { return StorageError(.readOnly, "write to a read-only device") }
            guard let buffers = op.buffers, op.bufferCount > 0 else {
                return StorageError(.outOfRange, "\(op.kind) without buffers")
            }
            if op.bufferCount > maxBuffers {
                return StorageError(.outOfRange, "\(op.kind) with \(op.bufferCount) buffers; at most \(maxBuffers) (IOV_MAX)")
            }
            let length = op.transferLength
            if length == 0 { return StorageError(.outOfRange, "\(op.kind) of zero bytes") }
            if let r = rangeRefusal(op.offset, length, byteCount, op.kind) { return r }
            if alignment > 1 {
                let a = UInt64(alignment)
                if op.offset % a != 0 {
                    return StorageError(.misaligned, "\(op.kind) offset \(op.offset) is not a multiple of \(alignment) (O_DIRECT)")
                }
                for i in 0..<op.bufferCount {
                    let address = UInt(bitPattern: buffers[i].iov_base)
                    if address % UInt(alignment) != 0 || buffers[i].iov_len % alignment != 0 {
                        return StorageError(.misaligned,
                            "\(op.kind) buffer \(i) at 0x\(String(address, radix: 16)) length \(buffers[i].iov_len) is not \(alignment)-byte aligned (O_DIRECT)")
                    }
                }
            }
            return nil
        }
    }

    /// (Takes the kind, not a message: building a String here would allocate on every operation.)
    static func rangeRefusal(_ offset: UInt64, _ length: UInt64, _ byteCount: UInt64, _ what: StorageOperation.Kind) -> StorageError? {
        guard offset <= byteCount && length <= byteCount - offset else {
            return StorageError(.outOfRange, "\(what) of \(length) bytes at \(offset) leaves the device (\(byteCount) bytes)")
        }
        return nil
    }
}
