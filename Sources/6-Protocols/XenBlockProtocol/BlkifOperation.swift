import CXen

/// A blkif request code (`BLKIF_OP_*` in `blkif.h`).
///
/// Any byte a peer writes is representable; `isKnown` says whether the header defines it.
@frozen
public struct BlkifOperation: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `operation` byte as it lies in the request slot.
    public var rawValue: UInt8
    /// Wraps any operation byte, known or not; see ``isKnown``.
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Wraps any operation byte, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    /// `BLKIF_OP_READ`.
    public static let read = BlkifOperation(UInt8(BLKIF_OP_READ))
    /// `BLKIF_OP_WRITE`.
    public static let write = BlkifOperation(UInt8(BLKIF_OP_WRITE))
    /// `BLKIF_OP_WRITE_BARRIER`: earlier writes complete before it, later ones after ("feature-barrier").
    public static let writeBarrier = BlkifOperation(UInt8(BLKIF_OP_WRITE_BARRIER))
    /// `BLKIF_OP_FLUSH_DISKCACHE`: commit the backing device's volatile cache ("feature-flush-cache").
    public static let flushDiskCache = BlkifOperation(UInt8(BLKIF_OP_FLUSH_DISKCACHE))
    /// `BLKIF_OP_RESERVED_1`: reserved for SLES; never served.
    public static let reserved1 = BlkifOperation(UInt8(BLKIF_OP_RESERVED_1))
    /// `BLKIF_OP_DISCARD`: the range is no longer in use ("feature-discard").
    public static let discard = BlkifOperation(UInt8(BLKIF_OP_DISCARD))
    /// `BLKIF_OP_INDIRECT`: segments live in granted pages ("feature-max-indirect-segments").
    public static let indirect = BlkifOperation(UInt8(BLKIF_OP_INDIRECT))

    /// True for the codes `blkif.h` defines for use (not `BLKIF_OP_RESERVED_1`).
    @inlinable public var isKnown: Bool {
        switch self {
        case .read, .write, .writeBarrier, .flushDiskCache, .discard, .indirect: true
        default: false
        }
    }

    /// The operation's name (`read`, `flush-diskcache`), or `op(N)` for an unknown byte.
    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .writeBarrier: "write-barrier"
        case .flushDiskCache: "flush-diskcache"
        case .reserved1: "reserved-1"
        case .discard: "discard"
        case .indirect: "indirect"
        default: "op(\(rawValue))"
        }
    }
}

/// A blkif response status (`BLKIF_RSP_*` in `blkif.h`).
@frozen
public struct BlkifStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `status` field as it lies in the response slot.
    public var rawValue: Int16
    /// Wraps any status value, known or not.
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }
    /// Wraps any status value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: Int16) { self.rawValue = rawValue }

    /// `BLKIF_RSP_OKAY`: the operation completed successfully.
    public static let okay = BlkifStatus(Int16(BLKIF_RSP_OKAY))
    /// `BLKIF_RSP_ERROR`: the operation failed ("-EIO").
    public static let error = BlkifStatus(Int16(BLKIF_RSP_ERROR))
    /// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
    public static let notSupported = BlkifStatus(Int16(BLKIF_RSP_EOPNOTSUPP))

    /// `okay`, `error`, `not supported`, or `status(N)` for a value `blkif.h` does not define.
    public var description: String {
        switch self {
        case .okay: "okay"
        case .error: "error"
        case .notSupported: "not supported"
        default: "status(\(rawValue))"
        }
    }
}
