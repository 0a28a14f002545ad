import CBlkifABI
import CXen
import XenABI

extension BlockRequest {
    /// Copies one request slot out of the shared ring (`abi.requestSize` bytes, once) and
    /// decodes and validates the copy. The peer may rewrite the slot meanwhile; nothing
    /// here reads it twice.
    public init(copyingSlotAt slot: UnsafeRawPointer, abi: BlkifABI, limits: BlockDeviceLimits) throws(BlockRequestError) {
        var copy = blkif_request()
        // SAFETY: `copy` is 112 bytes, `requestSize` is at most that; the caller lends a slot of that size.
        withUnsafeMutableBytes(of: &copy) { $0.baseAddress!.copyMemory(from: slot, byteCount: abi.requestSize) }
        try self.init(validating: copy, abi: abi, limits: limits)
    }

    /// Decodes and validates a request slot already copied out of the ring.
    ///
    /// For `.x86_32` the value holds the i386 bytes (the first 108 of its 112).
    /// The checks, each answered with a typed error (never a trap):
    /// - a defined operation (`BLKIF_OP_*`), and an optional one only if advertised;
    /// - read/write: 1...`BLKIF_MAX_SEGMENTS_PER_REQUEST` segments; flush/barrier: none
    ///   (unless ``BlockDeviceLimits/acceptsDataOnFlush``);
    /// - every segment `first_sect <= last_sect < sectors-per-page` (7 for 512-byte sectors);
    /// - the sector range inside `sectors`, computed without overflow;
    /// - no write, barrier with data, discard or indirect write on a read-only device;
    /// - discard: in range, `BLKIF_DISCARD_SECURE` only with `discard-secure`;
    /// - indirect: `indirect_op` read or write, 1...`feature-max-indirect-segments` segments.
    public init(validating copy: blkif_request, abi: BlkifABI = .native, limits: BlockDeviceLimits) throws(BlockRequestError) {
        let slot = SlotBytes(copy)
        let L = abi.layout
        let op = BlkifOperation(slot.load(L.operation, as: UInt8.self))
        let id = slot.load(L.id, as: UInt64.self)
        let handle = slot.load(L.handle, as: UInt16.self)

        func fail(_ code: BlockRequestError.Code, _ message: String) -> BlockRequestError {
            BlockRequestError(code, message, id: id, operation: op)
        }

        switch op {
        case .read, .write:
            let isWrite = op == .write
            if isWrite && limits.readOnly { throw fail(.readOnly, "write to a read-only device") }
            let sector = slot.load(L.sector, as: UInt64.self)
            let segments = try Self.directSegments(slot, L, limits, fail)
            try Self.checkRange(sector, segments.sectorCount, limits, fail)
            self.init(id: id, handle: handle, operation: isWrite ? .write(sector: sector, segments: segments)
                                                                 : .read(sector: sector, segments: segments))

        case .flushDiskCache, .writeBarrier:
            let isFlush = op == .flushDiskCache
            guard isFlush ? limits.flush : limits.barrier else {
                throw fail(.unsupportedOperation, isFlush ? "feature-flush-cache not advertised" : "feature-barrier not advertised")
            }
            let sector = slot.load(L.sector, as: UInt64.self)
            let count = slot.load(L.nrSegments, as: UInt8.self)
            var segments = BlockSegments()
            if count != 0 {
                guard limits.acceptsDataOnFlush else {
                    throw fail(.badSegmentCount, "\(op) carries \(count) segments; it must carry none")
                }
                if limits.readOnly { throw fail(.readOnly, "\(op) with data to a read-only device") }
                segments = try Self.directSegments(slot, L, limits, fail)
                try Self.checkRange(sector, segments.sectorCount, limits, fail)
            }
            self.init(id: id, handle: handle, operation: isFlush ? .flush(sector: sector, segments: segments)
                                                                 : .writeBarrier(sector: sector, segments: segments))

        case .discard:
            guard limits.discard else { throw fail(.unsupportedOperation, "feature-discard not advertised") }
            let flag = slot.load(L.discardFlag, as: UInt8.self)
            let secure = flag & cblkif_discard_secure != 0
            if secure && !limits.secureDiscard {
                throw fail(.unsupportedOperation, "BLKIF_DISCARD_SECURE without discard-secure")
            }
            if limits.readOnly { throw fail(.readOnly, "discard on a read-only device") }
            let sector = slot.load(L.discardSector, as: UInt64.self)
            let count = slot.load(L.discardCount, as: UInt64.self)
            try Self.checkRange(sector, count, limits, fail)
            self.init(id: id, handle: handle, operation: .discard(sector: sector, count: count, secure: secure))

        case .indirect:
            guard limits.maxIndirectSegments > 0 else {
                throw fail(.unsupportedOperation, "feature-max-indirect-segments not advertised")
            }
            let inner = BlkifOperation(slot.load(L.indirectOp, as: UInt8.self))
            guard inner == .read || inner == .write else {
                throw fail(.badIndirectOperation, "indirect_op \(inner) is neither read nor write")
            }
            if inner == .write && limits.readOnly { throw fail(.readOnly, "indirect write to a read-only device") }
            let count = Int(slot.load(L.indirectNrSegments, as: UInt16.self))
            guard count >= 1 && count <= limits.maxIndirectSegments else {
                throw fail(.badSegmentCount, "indirect request with \(count) segments; allowed 1...\(limits.maxIndirectSegments)")
            }
            let sector = slot.load(L.indirectSector, as: UInt64.self)
            // The full range is known only once the segments are read; the start must already fit.
            guard sector < limits.sectors else {
                throw fail(.outOfRange, "sector \(sector) is past the end (\(limits.sectors) sectors)")
            }
            var grefs = InlineArray<8, GrantRef>(repeating: GrantRef(0))
            for i in 0..<IndirectRequest.pagesNeeded(forSegments: count) {
                grefs[i] = GrantRef(slot.load(L.indirectGrefs + i * MemoryLayout<grant_ref_t>.size, as: UInt32.self))
            }
            self.init(
                id: id, handle: slot.load(L.indirectHandle, as: UInt16.self),
                operation: .indirect(IndirectRequest(operation: inner, sector: sector, segmentCount: count, grefs: grefs)))

        default:
            throw fail(.unknownOperation, "unknown operation \(op.rawValue)")
        }
    }

    /// Reads and checks the inline segment array of a copied slot.
    @inline(__always)
    static func directSegments(
        _ slot: SlotBytes, _ L: BlkifLayout, _ limits: BlockDeviceLimits,
        _ fail: (BlockRequestError.Code, String) -> BlockRequestError
    ) throws(BlockRequestError) -> BlockSegments {
        let count = Int(slot.load(L.nrSegments, as: UInt8.self))
        guard count >= 1 && count <= BlockDeviceLimits.maxDirectSegments else {
            throw fail(.badSegmentCount, "\(count) segments; allowed 1...\(BlockDeviceLimits.maxDirectSegments)")
        }
        var segments = BlockSegments()
        for i in 0..<count {
            let base = L.segments + i * SegmentLayout.stride
            let segment = BlockSegment(
                gref: GrantRef(slot.load(base + SegmentLayout.gref, as: UInt32.self)),
                firstSector: slot.load(base + SegmentLayout.first, as: UInt8.self),
                lastSector: slot.load(base + SegmentLayout.last, as: UInt8.self))
            try checkSegment(segment, index: i, limits, fail)
            segments.append(segment)
        }
        return segments
    }

    @inline(__always)
    static func checkSegment(
        _ s: BlockSegment, index: Int, _ limits: BlockDeviceLimits,
        _ fail: (BlockRequestError.Code, String) -> BlockRequestError
    ) throws(BlockRequestError) {
        guard s.firstSector <= s.lastSector && Int(s.lastSector) < limits.sectorsPerPage else {
            throw fail(.badSegment,
                       "segment \(index): first_sect \(s.firstSector), last_sect \(s.lastSector); need first <= last <= \(limits.sectorsPerPage - 1)")
        }
    }

    @inline(__always)
    static func checkRange(
        _ sector: UInt64, _ count: UInt64, _ limits: BlockDeviceLimits,
        _ fail: (BlockRequestError.Code, String) -> BlockRequestError
    ) throws(BlockRequestError) {
        guard limits.contains(sector: sector, count: count) else {
            throw fail(.outOfRange, "sectors \(sector) + \(count) leave the device (\(limits.sectors) sectors)")
        }
    }
}

extension BlockRequest {
    /// Copies and validates the segment list of an indirect request out of its granted pages.
    ///
    /// `page(i)` lends the mapped page `indirect_grefs[i]` (4 KiB) for `i` in `0..<pageCount`;
    /// each `blkif_request_segment` is read from it exactly once, into `out`, and the copy
    /// is checked (`first_sect <= last_sect < sectors-per-page`), then the whole range
    /// against the device. Returns the total sectors. `out` must hold `segmentCount`.
    public func copyIndirectSegments(
        limits: BlockDeviceLimits,
        page: (Int) -> UnsafeRawPointer,
        into out: UnsafeMutableBufferPointer<BlockSegment>
    ) throws(BlockRequestError) -> UInt64 {
        guard case .indirect(let indirect) = operation else {
            preconditionFailure("copyIndirectSegments on a request that is not BLKIF_OP_INDIRECT")
        }
        precondition(out.count >= indirect.segmentCount, "output buffer smaller than nr_segments")
        let op = code
        let id = self.id
        func fail(_ code: BlockRequestError.Code, _ message: String) -> BlockRequestError {
            BlockRequestError(code, message, id: id, operation: op)
        }
        let perPage = BlockDeviceLimits.segmentsPerIndirectPage
        var total: UInt64 = 0
        var index = 0
        for p in 0..<indirect.pageCount {
            let base = page(p)
            let inPage = min(perPage, indirect.segmentCount - p * perPage)
            for j in 0..<inPage {
                let at = j * SegmentLayout.stride
                out[index] = BlockSegment(
                    gref: GrantRef(base.loadUnaligned(fromByteOffset: at + SegmentLayout.gref, as: UInt32.self)),
                    firstSector: base.loadUnaligned(fromByteOffset: at + SegmentLayout.first, as: UInt8.self),
                    lastSector: base.loadUnaligned(fromByteOffset: at + SegmentLayout.last, as: UInt8.self))
                try Self.checkSegment(out[index], index: index, limits, fail)
                total += UInt64(out[index].sectorCount)
                index += 1
            }
        }
        try Self.checkRange(indirect.sector, total, limits, fail)
        return total
    }
}
