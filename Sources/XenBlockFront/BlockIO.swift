import XenBlockProtocol
import XenLocks

/// One caller's operation, from its `async` call until every byte of it is answered.
/// Split into ring requests by the queue threads; the last answer resumes the caller.
final class BlockIO: @unchecked Sendable {
    // @unchecked: `state` is only touched while `lock` is held; the rest is immutable.
    enum Kind: Sendable { case read, write, flush, discard }

    let kind: Kind
    /// Byte offset on the device.
    let offset: UInt64
    /// Bytes to move (read/write) or to discard; 0 for flush.
    let length: UInt64
    /// The caller's buffer (read/write), lent until the caller is resumed.
    nonisolated(unsafe) let buffer: UnsafeMutableRawPointer?
    private let lock = Lock()
    private var state: State

    struct State {
        /// Units not yet answered: bytes for read/write, 1 for flush and discard.
        var remaining: UInt64
        var error: BlockFrontError?
        var continuation: CheckedContinuation<Result<Void, BlockFrontError>, Never>?
    }

    init(kind: Kind, offset: UInt64, length: UInt64, buffer: UnsafeMutableRawPointer?) {
        self.kind = kind
        self.offset = offset
        self.length = length
        self.buffer = buffer
        let units: UInt64 = (kind == .read || kind == .write) ? length : 1
        state = State(remaining: units, error: nil, continuation: nil)
    }

    /// Units the whole operation consists of.
    var units: UInt64 { (kind == .read || kind == .write) ? length : 1 }

    func setContinuation(_ c: CheckedContinuation<Result<Void, BlockFrontError>, Never>) {
        lock.withLock { state.continuation = c }
    }

    /// Records the answer to `units` of this operation; resumes the caller after the last.
    func answer(units: UInt64, error: BlockFrontError?) {
        let resume: (CheckedContinuation<Result<Void, BlockFrontError>, Never>, Result<Void, BlockFrontError>)? =
            lock.withLock {
                if let error, state.error == nil { state.error = error }
                state.remaining -= min(units, state.remaining)
                guard state.remaining == 0, let c = state.continuation else { return nil }
                state.continuation = nil
                return (c, state.error.map { .failure($0) } ?? .success(()))
            }
        if let (c, r) = resume { c.resume(returning: r) }
    }

    /// Fails what is left of the operation at once.
    func fail(_ error: BlockFrontError) {
        let c: CheckedContinuation<Result<Void, BlockFrontError>, Never>? = lock.withLock {
            state.remaining = 0
            defer { state.continuation = nil }
            return state.continuation
        }
        c?.resume(returning: .failure(error))
    }
}

/// A part of an operation still to be sent: bytes `start..<end` of it (flush and discard:
/// the whole operation, `0..<1`).
struct WorkItem: Sendable {
    let io: BlockIO
    var start: UInt64
    var end: UInt64
}
