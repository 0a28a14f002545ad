import XenABI

/// Which frames of a domain were written: one bit per frame, as Xen's log-dirty
/// bitmap (`XEN_DOMCTL_SHADOW_OP_CLEAN` fills one for the toolstack).
public struct DirtyBitmap: Sendable, Hashable, CustomStringConvertible {
    /// Frames covered: `0 ..< frameCount`.
    public let frameCount: Int
    /// The bits, frame `n` at bit `n % 64` of word `n / 64`.
    public private(set) var words: [UInt64]

    /// A bitmap of `frameCount` frames, none dirty (a negative count is taken as 0).
    public init(frameCount: Int) {
        self.frameCount = max(0, frameCount)
        words = Array(repeating: 0, count: (self.frameCount + 63) / 64)
    }

    /// Marks `frame` dirty; a frame beyond ``frameCount`` is ignored (it is no frame of the domain).
    public mutating func insert(_ frame: FrameNumber) {
        guard frame.rawValue < UInt64(frameCount) else { return }
        let f = Int(frame.rawValue)
        words[f >> 6] |= 1 << UInt64(f & 63)
    }

    /// Marks `count` frames from `first` dirty, stopping at ``frameCount``.
    public mutating func insert(first: FrameNumber, count: Int) {
        guard count > 0, first.rawValue < UInt64(frameCount) else { return }
        let start = Int(first.rawValue)
        for f in start..<min(frameCount, start + min(count, frameCount)) { words[f >> 6] |= 1 << UInt64(f & 63) }
    }

    /// Whether `frame` is dirty.
    public func contains(_ frame: FrameNumber) -> Bool {
        guard frame.rawValue < UInt64(frameCount) else { return false }
        let f = Int(frame.rawValue)
        return words[f >> 6] & (1 << UInt64(f & 63)) != 0
    }

    /// Adds every frame of `word` at word index `index` (`index * 64` is its first frame).
    public mutating func formUnion(word: UInt64, at index: Int) {
        guard index >= 0, index < words.count else { return }
        // Bits past frameCount in the last word stay clear.
        let valid = frameCount - index * 64
        words[index] |= valid >= 64 ? word : word & ((1 << UInt64(valid)) &- 1)
    }

    /// Adds every frame dirty in `other` (frames beyond this bitmap's count are dropped).
    public mutating func formUnion(_ other: DirtyBitmap) {
        for (i, w) in other.words.enumerated() where w != 0 { formUnion(word: w, at: i) }
    }

    /// The number of dirty frames.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// True when no frame is dirty.
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// The dirty frames, ascending.
    public var frames: [FrameNumber] {
        var out: [FrameNumber] = []
        for (i, w) in words.enumerated() where w != 0 {
            var bits = w
            while bits != 0 {
                out.append(FrameNumber(UInt64(i * 64 + bits.trailingZeroBitCount)))
                bits &= bits &- 1
            }
        }
        return out
    }

    /// `N of M frames dirty`, for logs.
    public var description: String { "\(count) of \(frameCount) frames dirty" }
}

/// Log-dirty of a domain's memory, for the toolstack (Xen's
/// `XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY`, `…_CLEAN` and `…_OFF`): what live
/// migration and checkpointing copy again after a first full pass.
///
/// Every writer of the domain's frames is covered: the domain's own writes to its
/// memory and what other domains write into it through its grants (a writable
/// mapping's frames count as written when it is unmapped and at every
/// ``readAndClearDirty(_:)`` while mapped; a grant copy into a frame marks it), as
/// Xen's grant code marks pages dirty for its log.
public protocol DirtyLogging: AnyObject, Sendable {
    /// Starts logging `domain`'s writes; frames count from now. `EBUSY` if it
    /// already logs, `ESRCH` for no such domain, `EOPNOTSUPP` where the kernel
    /// cannot track writes.
    func startDirtyLog(_ domain: DomainID) throws(HypervisorError)
    /// Returns the frames written since logging started or since the previous
    /// call, and clears them: a frame is reported once, then again only once
    /// it is written again (`XEN_DOMCTL_SHADOW_OP_CLEAN`). `EINVAL` when not logging.
    func readAndClearDirty(_ domain: DomainID) throws(HypervisorError) -> DirtyBitmap
    /// Stops logging and releases what tracking held (write protection, descriptors).
    /// `EINVAL` when not logging.
    func stopDirtyLog(_ domain: DomainID) throws(HypervisorError)
}
