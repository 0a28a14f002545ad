import CBlkifABI
import CXen

/// What a backend advertised for one device: every request is validated against it.
/// Optional features default to off, as blkif.h's absent nodes do ("Default Value: 0").
///
/// Sector quantities (`sector_number`, `nr_sectors`, `first_sect`, `last_sect`) are in
/// units of ``sectorSize`` (blkif.h, "feature-large-sector-size"); a backend whose
/// frontend did not announce that feature advertises 512 here.
public struct BlockDeviceLimits: Hashable, Sendable {
    /// `sectors`: the device size in units of ``sectorSize``.
    public var sectors: UInt64
    /// `sector-size`: the logical block size, a power of two, at least 512, at most a page.
    public var sectorSize: UInt32
    /// `mode = "r"` / `VDISK_READONLY`: writes are refused.
    public var readOnly: Bool
    /// `feature-flush-cache`.
    public var flush: Bool
    /// `feature-barrier`.
    public var barrier: Bool
    /// `feature-discard`.
    public var discard: Bool
    /// `discard-secure`: `BLKIF_DISCARD_SECURE` is honoured; otherwise such a discard is not supported.
    public var secureDiscard: Bool
    /// `feature-max-indirect-segments`; 0 when the node is not written (then `BLKIF_OP_INDIRECT`
    /// is not supported). At most ``maxIndirectSegmentsLimit``.
    public var maxIndirectSegments: Int
    /// Accept segments on a flush or barrier request and treat it as "write these, then
    /// flush". Linux blkfront sends FUA writes that way and Linux blkback accepts them;
    /// the blkif contract itself has no data on a flush, so the default is to refuse.
    public var acceptsDataOnFlush: Bool

    /// Limits for a device of `sectors` sectors with the given features, all optional ones off by default. Traps (a caller bug, never peer input) unless `sectorSize` is a power of two from 512 to a page and `maxIndirectSegments` is within 0...``maxIndirectSegmentsLimit``.
    public init(
        sectors: UInt64, sectorSize: UInt32 = 512, readOnly: Bool = false,
        flush: Bool = false, barrier: Bool = false, discard: Bool = false, secureDiscard: Bool = false,
        maxIndirectSegments: Int = 0, acceptsDataOnFlush: Bool = false
    ) {
        precondition(
            sectorSize >= 512 && sectorSize <= cxen_page_size && sectorSize & (sectorSize - 1) == 0,
            "sector-size must be a power of two from 512 to a page")
        precondition(
            (0...Self.maxIndirectSegmentsLimit).contains(maxIndirectSegments),
            "feature-max-indirect-segments is at most BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST pages of segments")
        self.sectors = sectors
        self.sectorSize = sectorSize
        self.readOnly = readOnly
        self.flush = flush
        self.barrier = barrier
        self.discard = discard
        self.secureDiscard = secureDiscard
        self.maxIndirectSegments = maxIndirectSegments
        self.acceptsDataOnFlush = acceptsDataOnFlush
    }

    /// Sectors in one 4 KiB data page: `last_sect` must be below this (7 for 512-byte sectors).
    @inlinable public var sectorsPerPage: Int { Int(cxen_page_size / sectorSize) }

    /// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments a direct read or write may carry.
    public static let maxDirectSegments = Int(BLKIF_MAX_SEGMENTS_PER_REQUEST)
    /// Segments one indirect page holds: PAGE_SIZE / sizeof(struct blkif_request_segment).
    public static let segmentsPerIndirectPage = Int(cblkif_segs_per_indirect_frame)
    /// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: indirect pages one request may name.
    public static let maxIndirectPages = Int(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
    /// The most segments an indirect request can describe at all (8 pages × 512).
    public static let maxIndirectSegmentsLimit = maxIndirectPages * segmentsPerIndirectPage

    /// True when `count` sectors from `start` lie inside the device; never overflows.
    @inlinable public func contains(sector start: UInt64, count: UInt64) -> Bool {
        start <= sectors && count <= sectors - start
    }
}
