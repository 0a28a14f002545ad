import Synchronization
import XenBlockProtocol

/// One caller's operation, from its call until every byte of it is answered. Split into
/// ring requests by the queue threads; the last answer resumes the caller (or calls it
/// back, for ``BlockFrontend/startRead(at:into:done:)`` and its write).
///
/// No lock: a split operation's parts may be answered by several queue threads, but
/// `remaining` is only changed by atomic read-modify-writes, and exactly one of them
/// takes it to zero; that one resumes the caller.
final class BlockIO: Sendable {
    enum Kind: Sendable { case read, write, flush, discard }

    let kind: Kind
    /// Byte offset on the device.
    let offset: UInt64
    /// Bytes to move (read/write) or to discard; 0 for flush.
    let length: UInt64
    /// The caller's buffer (read/write), lent until the caller is resumed.
    nonisolated(unsafe) let buffer: UnsafeMutableRawPointer?
    /// A read that hands the caller each answered piece where it lies (offset into the
    /// read, bytes), instead of copying it to `buffer`.
    let consume: (@Sendable (Int, UnsafeRawBufferPointer) -> Void)?
    private let completion: Completion
    /// Units not yet answered: bytes for read/write, 1 for flush and discard.
    private let remaining: Atomic<UInt64>
    /// Claimed by the first answer that carries an error, which then writes `error`.
    private let errorClaimed = Atomic<Bool>(false)
    /// Written once, by the claimant, before its update of `remaining` publishes it.
    nonisolated(unsafe) private var error: BlockFrontError?

    /// How the caller hears the outcome.
    enum Completion: Sendable {
        /// An `async` caller, waiting.
        case resume(CheckedContinuation<Result<Void, BlockFrontError>, Never>)
        /// A callback (nil: success), run on the queue thread that took the last answer.
        case call(@Sendable (BlockFrontError?) -> Void)
    }

    /// Made before any part reaches a queue thread.
    init(kind: Kind, offset: UInt64, length: UInt64, buffer: UnsafeMutableRawPointer?,
         consume: (@Sendable (Int, UnsafeRawBufferPointer) -> Void)? = nil, completion: Completion) {
        self.kind = kind
        self.offset = offset
        self.length = length
        self.buffer = buffer
        self.consume = consume
        self.completion = completion
        remaining = Atomic((kind == .read || kind == .write) ? length : 1)
    }

    /// Records the answer to `units` of this operation; resumes the caller after the last.
    func answer(units: UInt64, error: BlockFrontError?) {
        // Relaxed: the claim orders nothing; the write it permits is published below.
        if let error, !errorClaimed.exchange(true, ordering: .relaxed) { self.error = error }
        var old = remaining.load(ordering: .relaxed)
        while true {
            // acquiringAndReleasing: each answer publishes its error and the bytes it copied
            // into the caller's buffer; the last one sees all of them.
            let (done, seen) = remaining.compareExchange(
                expected: old, desired: old - min(units, old), ordering: .acquiringAndReleasing)
            if done { break }
            old = seen
        }
        guard old > 0, old <= units else { return }  // not the answer that took it to zero
        complete(self.error)
    }

    /// Fails what is left of the operation at once (its parts are all off the rings).
    func fail(_ error: BlockFrontError) {
        // acquiringAndReleasing: as in answer; of several failed parts only the first resumes.
        guard remaining.exchange(0, ordering: .acquiringAndReleasing) > 0 else { return }
        complete(error)
    }

    private func complete(_ error: BlockFrontError?) {
        switch completion {
        case .resume(let c): c.resume(returning: error.map { .failure($0) } ?? .success(()))
        case .call(let done): done(error)
        }
    }
}

/// A part of an operation still to be sent: bytes `start..<end` of it (flush and discard:
/// the whole operation, `0..<1`).
struct WorkItem: Sendable {
    let io: BlockIO
    var start: UInt64
    var end: UInt64
}
