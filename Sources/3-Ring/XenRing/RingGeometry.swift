import XenABI

/// The layout of a shared ring over `pageCount` pages, computed as `ring.h`
/// does: a 64-byte header, then `entryCount` entries of `entrySize` bytes.
///
/// `entrySize` is `sizeof(union NAME_sring_entry)`: the larger of request and
/// response rounded up to the stricter alignment. `entryCount` is
/// `__RING_SIZE`: the entries that fit, rounded down to a power of two (`__RD32`).
@frozen
public struct RingGeometry: Hashable, Sendable {
    /// `offsetof(struct NAME_sring, ring)`: four indices, 4 bytes `pvt`, 44 bytes `__pad`.
    public static let headerSize = 64
    /// `offsetof(struct NAME_sring, req_prod)`: the header fields start the first page.
    public static let requestProducerOffset = 0
    /// `offsetof(struct NAME_sring, req_event)`.
    public static let requestEventOffset = 4
    /// `offsetof(struct NAME_sring, rsp_prod)`.
    public static let responseProducerOffset = 8
    /// `offsetof(struct NAME_sring, rsp_event)`.
    public static let responseEventOffset = 12
    /// `pvt` (4 bytes) and `__pad` (44 bytes): zeroed by `SHARED_RING_INIT`, otherwise untouched.
    public static let paddingRange = 16 ..< 64

    /// Pages the ring spans (a power of two: `1 << ring-page-order`).
    public let pageCount: Int
    /// Bytes per entry (the size of the request/response union).
    public let entrySize: Int
    /// Entries in the ring (`RING_SIZE`), a power of two.
    public let entryCount: UInt32

    /// The geometry for `entrySize`-byte entries over `pageCount` pages.
    ///
    /// Throws `.badGeometry` unless `pageCount` is a power of two (Xen rings
    /// span `1 << ring-page-order` pages) and at least one entry fits.
    public init(entrySize: Int, pageCount: Int) throws(RingError) {
        guard pageCount > 0, pageCount & (pageCount - 1) == 0, pageCount <= 1 << 20 else {
            throw RingError(.badGeometry, "a ring spans a power-of-two number of pages, not \(pageCount)")
        }
        guard entrySize > 0 else { throw RingError(.badGeometry, "ring entries must not be empty") }
        let fit = (pageCount * XenPage.size - Self.headerSize) / entrySize
        guard fit > 0 else {
            throw RingError(.badGeometry, "a \(entrySize)-byte entry does not fit in \(pageCount) page(s)")
        }
        // __RD32: round down to a power of two.
        self.entryCount = UInt32(1) << (UInt32.bitWidth - 1 - UInt32(fit).leadingZeroBitCount)
        self.entrySize = entrySize
        self.pageCount = pageCount
    }

    /// The geometry of `DEFINE_RING_TYPES(name, Request, Response)` over `pageCount` pages.
    public init<Request: BitwiseCopyable, Response: BitwiseCopyable>(
        request: Request.Type, response: Response.Type, pageCount: Int = 1
    ) throws(RingError) {
        guard max(MemoryLayout<Request>.alignment, MemoryLayout<Response>.alignment) <= Self.headerSize else {
            throw RingError(.badGeometry, "entries aligned beyond the 64-byte header are not a ring.h layout")
        }
        try self.init(entrySize: Self.entrySize(request: request, response: response), pageCount: pageCount)
    }

    /// The geometry over `1 << order` pages (xenstore `ring-page-order`).
    public init<Request: BitwiseCopyable, Response: BitwiseCopyable>(
        request: Request.Type, response: Response.Type, pageOrder order: Int
    ) throws(RingError) {
        guard order >= 0, order <= 20 else { throw RingError(.badGeometry, "ring-page-order \(order) out of range") }
        try self.init(request: request, response: response, pageCount: 1 << order)
    }

    /// `sizeof(union { Request req; Response rsp; })`.
    public static func entrySize<Request: BitwiseCopyable, Response: BitwiseCopyable>(
        request: Request.Type, response: Response.Type
    ) -> Int {
        let size = max(MemoryLayout<Request>.size, MemoryLayout<Response>.size)
        let align = max(MemoryLayout<Request>.alignment, MemoryLayout<Response>.alignment)
        return (size + align - 1) / align * align
    }

    /// Bytes the ring spans.
    public var byteCount: Int { pageCount * XenPage.size }
}
