// blkif request and response decoding in both ABIs (native x86_64 and x86_32).
//
// Input: byte 0 picks the ABI and the advertised limits; the next `requestSize`
// bytes are a request slot as a frontend wrote it; what follows stands for the
// indirect pages of a BLKIF_OP_INDIRECT request (zero-filled when short).
// Invariants: decoding never traps; a decoded request re-encodes to a slot that
// decodes to the same value; its sector range lies inside the device; a
// response slot decodes, re-encodes and decodes to the same value.
import XenBlockProtocol

func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard let config = input.first else { return }
    let abi: BlkifABI = config & 1 == 0 ? .x86_64 : .x86_32
    let limits = BlockDeviceLimits(
        sectors: config & 0x80 == 0 ? 1 << 21 : UInt64.max >> (config & 0x3f),
        sectorSize: config & 0x40 == 0 ? 512 : 4096,
        readOnly: config & 2 != 0,
        flush: config & 4 != 0, barrier: config & 4 != 0,
        discard: config & 8 != 0, secureDiscard: config & 16 != 0,
        maxIndirectSegments: config & 32 != 0 ? BlockDeviceLimits.maxIndirectSegmentsLimit : 0,
        acceptsDataOnFlush: config & 2 == 0)
    let body = UnsafeRawBufferPointer(rebasing: input.dropFirst())

    // The slot, as the ring would lend it: exactly one request's bytes, zero-filled.
    let slot = UnsafeMutableRawBufferPointer.allocate(byteCount: abi.slotSize, alignment: 8)
    defer { slot.deallocate() }
    slot.initializeMemory(as: UInt8.self, repeating: 0)
    slot.copyMemory(from: UnsafeRawBufferPointer(rebasing: body.prefix(abi.requestSize)))

    if let request = try? BlockRequest(copyingSlotAt: slot.baseAddress!, abi: abi, limits: limits) {
        // Round trip through the encoder, in both write paths.
        let again = UnsafeMutableRawBufferPointer.allocate(byteCount: abi.slotSize, alignment: 8)
        defer { again.deallocate() }
        again.initializeMemory(as: UInt8.self, repeating: 0xa5)
        request.write(toSlot: again.baseAddress!, abi: abi)
        guard let decoded = try? BlockRequest(copyingSlotAt: again.baseAddress!, abi: abi, limits: limits) else {
            fatalError("re-encoded request no longer decodes: \(request)")
        }
        precondition(decoded == request, "round trip changed \(request) into \(decoded)")
        if abi == .x86_64 {
            precondition((try? BlockRequest(validating: request.encoded(abi: abi), abi: abi, limits: limits)) == request)
        }
        checkRange(request, limits: limits, body: UnsafeRawBufferPointer(rebasing: body.dropFirst(abi.requestSize)))
        let response = request.response(.okay)
        precondition(response.id == request.id && response.operation == request.code)
    }

    // The same bytes as a response slot (a frontend's side).
    let rsp = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
    defer { rsp.deallocate() }
    rsp.initializeMemory(as: UInt8.self, repeating: 0)
    rsp.copyMemory(from: UnsafeRawBufferPointer(rebasing: body.prefix(abi.responseSize)))
    let response = BlockResponse(copyingSlotAt: rsp.baseAddress!, abi: abi)
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
    defer { out.deallocate() }
    response.write(toSlot: out.baseAddress!, abi: abi)
    precondition(BlockResponse(copyingSlotAt: out.baseAddress!, abi: abi) == response)
}

/// The validated range never leaves the device; an indirect request's segment pages
/// (taken from `pages`, zero-filled past its end) are copied and checked once.
private func checkRange(_ request: BlockRequest, limits: BlockDeviceLimits, body pages: UnsafeRawBufferPointer) {
    switch request.operation {
    case .read(let sector, let segments), .write(let sector, let segments),
         .flush(let sector, let segments), .writeBarrier(let sector, let segments):
        precondition(segments.count <= BlockDeviceLimits.maxDirectSegments)
        precondition(segments.isEmpty || limits.contains(sector: sector, count: segments.sectorCount))
        for s in segments { precondition(s.firstSector <= s.lastSector && Int(s.lastSector) < limits.sectorsPerPage) }
    case .discard(let sector, let count, _):
        precondition(limits.contains(sector: sector, count: count))
    case .indirect(let indirect):
        precondition((1...limits.maxIndirectSegments).contains(indirect.segmentCount))
        precondition(indirect.sector < limits.sectors)
        let pageSize = 4096
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: indirect.pageCount * pageSize, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: pages.prefix(buffer.count)))
        let out = UnsafeMutableBufferPointer<BlockSegment>.allocate(capacity: indirect.segmentCount)
        defer { out.deallocate() }
        if let total = try? request.copyIndirectSegments(
            limits: limits, page: { UnsafeRawPointer(buffer.baseAddress! + $0 * pageSize) }, into: out) {
            precondition(limits.contains(sector: indirect.sector, count: total))
        }
    }
}
