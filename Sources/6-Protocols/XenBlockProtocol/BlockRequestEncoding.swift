import CBlkifABI
import CXen
import XenABI

extension BlockRequest {
    /// The slot a frontend writes for this request, built from a zeroed value so no
    /// byte of our memory but the fields reaches the peer. For `.x86_32` the i386
    /// bytes are the first `abi.requestSize` of the value.
    public func encoded(abi: BlkifABI = .native) -> blkif_request {
        let L = abi.layout
        var slot = SlotBytes()
        slot.store(code.rawValue, at: L.operation)
        slot.store(id, at: L.id)

        switch operation {
        case .read(let sector, let segments), .write(let sector, let segments),
             .flush(let sector, let segments), .writeBarrier(let sector, let segments):
            Self.putSegments(&slot, L, handle, sector, segments)
        case .discard(let sector, let count, let secure):
            slot.store(secure ? cblkif_discard_secure : 0, at: L.discardFlag)
            slot.store(handle, at: L.handle)
            slot.store(sector, at: L.discardSector)
            slot.store(count, at: L.discardCount)
        case .indirect(let indirect):
            slot.store(indirect.operation.rawValue, at: L.indirectOp)
            slot.store(UInt16(truncatingIfNeeded: indirect.segmentCount), at: L.indirectNrSegments)
            slot.store(indirect.sector, at: L.indirectSector)
            slot.store(handle, at: L.indirectHandle)
            for i in 0..<indirect.pageCount {
                slot.store(indirect.page(i).rawValue, at: L.indirectGrefs + i * MemoryLayout<grant_ref_t>.size)
            }
        }
        return slot.value
    }

    /// A static function, not a closure over `slot`: a captured `var` is boxed on the heap.
    private static func putSegments(_ slot: inout SlotBytes, _ L: BlkifLayout, _ handle: UInt16, _ sector: UInt64, _ segments: BlockSegments) {
        slot.store(UInt8(segments.count), at: L.nrSegments)
        slot.store(handle, at: L.handle)
        slot.store(sector, at: L.sector)
        for i in 0..<segments.count {
            let s = segments[i]
            let base = L.segments + i * SegmentLayout.stride
            slot.store(s.gref.rawValue, at: base + SegmentLayout.gref)
            slot.store(s.firstSector, at: base + SegmentLayout.first)
            slot.store(s.lastSector, at: base + SegmentLayout.last)
        }
    }

    /// Writes this request into a ring slot: the whole slot (`abi.requestSize` bytes) in
    /// one copy from a zeroed value.
    public func write(toSlot slot: UnsafeMutableRawPointer, abi: BlkifABI = .native) {
        var value = encoded(abi: abi)
        // SAFETY: `value` is 112 bytes and `requestSize` at most that; the caller lends a slot of that size.
        withUnsafeBytes(of: &value) { slot.copyMemory(from: $0.baseAddress!, byteCount: abi.requestSize) }
    }
}

extension IndirectRequest {
    /// Writes `segments` into indirect page `p` the way ``BlockRequest/copyIndirectSegments(limits:page:into:)``
    /// reads them: `segments-per-page` entries per page, the rest of the page untouched.
    public static func writeSegments(_ segments: UnsafeBufferPointer<BlockSegment>, toPage p: Int, at page: UnsafeMutableRawPointer) {
        let perPage = BlockDeviceLimits.segmentsPerIndirectPage
        let start = p * perPage
        let end = min(segments.count, start + perPage)
        guard start < end else { return }
        for i in start..<end {
            var s = blkif_request_segment()
            s.gref = segments[i].gref.rawValue
            s.first_sect = segments[i].firstSector
            s.last_sect = segments[i].lastSector
            page.storeBytes(of: s, toByteOffset: (i - start) * SegmentLayout.stride, as: blkif_request_segment.self)
        }
    }
}
