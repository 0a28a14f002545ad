import CBlkifProbe
import CXen
import XenABI
@testable import XenBlockProtocol

/// A ring slot filled by C through its field names (the way a C frontend writes it).
struct CSlot {
    var bytes = [UInt8](repeating: 0, count: 112)

    static func rw(_ abi: BlkifABI, op: UInt8, nseg: UInt8, handle: UInt16 = 0, id: UInt64, sector: UInt64,
                   segs: [(UInt32, UInt8, UInt8)]) -> CSlot {
        var s = CSlot()
        var g = segs.map(\.0), f = segs.map(\.1), l = segs.map(\.2)
        while g.count < 11 { g.append(0); f.append(0); l.append(0) }
        s.bytes.withUnsafeMutableBytes {
            cblkif_probe_fill_rw($0.baseAddress, abi == .x86_32 ? 1 : 0, op, nseg, handle, id, sector, g, f, l)
        }
        return s
    }

    static func discard(_ abi: BlkifABI, flag: UInt8 = 0, handle: UInt16 = 0, id: UInt64, sector: UInt64, count: UInt64) -> CSlot {
        var s = CSlot()
        s.bytes.withUnsafeMutableBytes {
            cblkif_probe_fill_discard($0.baseAddress, abi == .x86_32 ? 1 : 0, flag, handle, id, sector, count)
        }
        return s
    }

    static func indirect(_ abi: BlkifABI, op: UInt8, nseg: UInt16, handle: UInt16 = 0, id: UInt64, sector: UInt64,
                         grefs: [UInt32]) -> CSlot {
        var s = CSlot()
        s.bytes.withUnsafeMutableBytes {
            cblkif_probe_fill_indirect($0.baseAddress, abi == .x86_32 ? 1 : 0, op, nseg, handle, id, sector, grefs, Int32(grefs.count))
        }
        return s
    }

    /// Decodes through the shared-memory entry point (one copy out of `bytes`).
    func decode(_ abi: BlkifABI, _ limits: BlockDeviceLimits) throws(BlockRequestError) -> BlockRequest {
        try bytes.withUnsafeBytes { raw in
            Result { () throws(BlockRequestError) in try BlockRequest(copyingSlotAt: raw.baseAddress!, abi: abi, limits: limits) }
        }.get()
    }

    /// The decode error, or nil if it decoded.
    func refusal(_ abi: BlkifABI, _ limits: BlockDeviceLimits) -> BlockRequestError? {
        do { _ = try decode(abi, limits); return nil } catch { return error }
    }
}

func segments(_ list: [(UInt32, UInt8, UInt8)]) -> BlockSegments {
    var s = BlockSegments()
    for (g, f, l) in list { s.append(BlockSegment(gref: GrantRef(g), firstSector: f, lastSector: l)) }
    return s
}

let disk = BlockDeviceLimits(sectors: 1 << 20, flush: true, barrier: true, discard: true, maxIndirectSegments: 256)
