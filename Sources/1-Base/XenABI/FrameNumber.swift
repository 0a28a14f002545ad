/// A guest frame number (GFN): the index of a 4 KiB page in a domain's memory.
/// Grant entries carry it in their 32-bit `frame` field.
@frozen
public struct FrameNumber: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The frame number: the page's byte address in the domain shifted right by ``XenPage/shift``.
    public var rawValue: UInt64
    /// Wraps a guest frame number.
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Wraps a guest frame number, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    /// `gfn:` followed by the number, for logs.
    public var description: String { "gfn:\(rawValue)" }
    /// Orders frames by number (address order within the domain).
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// Page geometry of every Xen guest on x86: 4 KiB frames (`XEN_PAGE_SIZE`).
public enum XenPage {
    /// Bytes in one frame.
    public static let size = 4096
    /// log2 of `size`.
    public static let shift = 12
    /// Sectors of 512 bytes in one frame (blkif addresses 512-byte sectors).
    public static let sectorsPerPage = 8
}
