import CBlkifABI
import CXen

/// The machine ABI of a ring's slots, named by the frontend's `protocol` key
/// (`XEN_IO_PROTO_ABI_*` in `io/protocols.h`; default `XEN_IO_PROTO_ABI_NATIVE`).
public enum BlkifABI: Hashable, Sendable, CaseIterable {
    /// `x86_64-abi`: the native `struct blkif_request` layout on x86-64.
    case x86_64
    /// `x86_32-abi`: i386 alignment (a `uint64_t` aligned to 4), as Linux blkback's
    /// `blkif_x86_32_*` structures spell it.
    case x86_32

    /// The ABI this process uses itself (a frontend here always writes it).
    public static let native = BlkifABI.x86_64

    /// Parses the frontend's `protocol` node; nil for an ABI we do not serve (e.g. `arm-abi`).
    public init?(protocolName: String) {
        switch protocolName {
        case XEN_IO_PROTO_ABI_X86_64: self = .x86_64
        case XEN_IO_PROTO_ABI_X86_32: self = .x86_32
        default: return nil
        }
    }

    /// The `XEN_IO_PROTO_ABI_*` string naming this ABI.
    public var protocolName: String {
        switch self {
        case .x86_64: XEN_IO_PROTO_ABI_X86_64
        case .x86_32: XEN_IO_PROTO_ABI_X86_32
        }
    }

    /// Bytes of one ring slot: the stride of the ring's entry array (`union blkif_sring_entry`).
    public var slotSize: Int {
        switch self {
        case .x86_64: Int(cblkif_native_slot_size)
        case .x86_32: Int(cblkif_x86_32_slot_size)
        }
    }

    /// Slots in a shared ring of `pages` 4 KiB pages: ring.h's `__RING_SIZE`, the largest
    /// power of two that fits after the 64-byte header. (32 for one page in both ABIs.)
    public func ringEntries(pages: Int) -> Int {
        precondition(pages >= 1, "a ring has at least one page")
        let fit = (pages * Int(cxen_page_size) - Int(cxen_sring_header_size)) / slotSize
        return fit == 0 ? 0 : 1 << (Int.bitWidth - 1 - fit.leadingZeroBitCount)
    }

    /// Bytes of a request the peer writes into a slot.
    public var requestSize: Int {
        switch self {
        case .x86_64: MemoryLayout<blkif_request>.size
        case .x86_32: Int(cblkif_x86_32_slot_size)
        }
    }

    /// Bytes of a response written into a slot (the struct, padding included).
    public var responseSize: Int {
        switch self {
        case .x86_64: MemoryLayout<blkif_response>.size
        case .x86_32: Int(cblkif_x86_32_rsp_size)
        }
    }

    @usableFromInline var layout: BlkifLayout {
        switch self {
        case .x86_64: .native
        case .x86_32: .x86_32
        }
    }
}

/// Byte offsets of every field in one ABI's slot layouts, taken from the C
/// compiler (`MemoryLayout.offset(of:)` on the imported structs, or `offsetof`
/// constants for the packed i386 ones): nothing here is typed in by hand.
@usableFromInline
struct BlkifLayout: Sendable {
    var operation: Int
    var nrSegments: Int
    var handle: Int
    var id: Int
    var sector: Int
    var segments: Int
    var discardFlag: Int
    var discardSector: Int
    var discardCount: Int
    var indirectOp: Int
    var indirectNrSegments: Int
    var indirectSector: Int
    var indirectHandle: Int
    var indirectGrefs: Int
    var responseOperation: Int
    var responseStatus: Int

    static let native = BlkifLayout(
        operation: MemoryLayout<blkif_request>.offset(of: \.operation)!,
        nrSegments: MemoryLayout<blkif_request>.offset(of: \.nr_segments)!,
        handle: MemoryLayout<blkif_request>.offset(of: \.handle)!,
        id: MemoryLayout<blkif_request>.offset(of: \.id)!,
        sector: MemoryLayout<blkif_request>.offset(of: \.sector_number)!,
        segments: MemoryLayout<blkif_request>.offset(of: \.seg)!,
        discardFlag: MemoryLayout<blkif_request_discard>.offset(of: \.flag)!,
        discardSector: MemoryLayout<blkif_request_discard>.offset(of: \.sector_number)!,
        discardCount: MemoryLayout<blkif_request_discard>.offset(of: \.nr_sectors)!,
        indirectOp: MemoryLayout<blkif_request_indirect>.offset(of: \.indirect_op)!,
        indirectNrSegments: MemoryLayout<blkif_request_indirect>.offset(of: \.nr_segments)!,
        indirectSector: MemoryLayout<blkif_request_indirect>.offset(of: \.sector_number)!,
        indirectHandle: MemoryLayout<blkif_request_indirect>.offset(of: \.handle)!,
        indirectGrefs: MemoryLayout<blkif_request_indirect>.offset(of: \.indirect_grefs)!,
        responseOperation: MemoryLayout<blkif_response>.offset(of: \.operation)!,
        responseStatus: MemoryLayout<blkif_response>.offset(of: \.status)!)

    static let x86_32 = BlkifLayout(
        operation: Int(cblkif_x86_32_off_operation),
        nrSegments: Int(cblkif_x86_32_off_nr_segments),
        handle: Int(cblkif_x86_32_off_handle),
        id: Int(cblkif_x86_32_off_id),
        sector: Int(cblkif_x86_32_off_sector_number),
        segments: Int(cblkif_x86_32_off_seg),
        discardFlag: Int(cblkif_x86_32_off_discard_flag),
        discardSector: Int(cblkif_x86_32_off_discard_sector_number),
        discardCount: Int(cblkif_x86_32_off_discard_nr_sectors),
        indirectOp: Int(cblkif_x86_32_off_indirect_op),
        indirectNrSegments: Int(cblkif_x86_32_off_indirect_nr_segments),
        indirectSector: Int(cblkif_x86_32_off_indirect_sector_number),
        indirectHandle: Int(cblkif_x86_32_off_indirect_handle),
        indirectGrefs: Int(cblkif_x86_32_off_indirect_grefs),
        responseOperation: Int(cblkif_x86_32_off_rsp_operation),
        responseStatus: Int(cblkif_x86_32_off_rsp_status))
}
