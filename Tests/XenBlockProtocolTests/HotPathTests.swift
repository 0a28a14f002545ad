import CMallocCounter
import CXen
import Testing
import XenABI
@testable import XenBlockProtocol

/// Decoding a slot, validating it and writing the response allocate nothing.
@Suite(.timeLimit(.minutes(5)))
struct HotPathTests {
    @Test func decodeValidateRespondDoesNotAllocate() throws {
        let limits = BlockDeviceLimits(sectors: 1 << 30, flush: true, barrier: true, discard: true, maxIndirectSegments: 512)
        let ring = UnsafeMutableRawPointer.allocate(byteCount: 4 * 112, alignment: 64)
        defer { ring.deallocate() }
        let segs = segments((0..<11).map { (UInt32($0 + 1), 0, 7) })
        BlockRequest(id: 1, operation: .write(sector: 800, segments: segs)).write(toSlot: ring)
        BlockRequest(id: 2, operation: .discard(sector: 0, count: 64, secure: false)).write(toSlot: ring + 112)
        BlockRequest(id: 3, operation: .indirect(IndirectRequest(operation: .read, sector: 8, segmentCount: 300, pages: [GrantRef(9)])))
            .write(toSlot: ring + 224)
        BlockRequest(id: 4, operation: .flush(sector: 0, segments: [])).write(toSlot: ring + 336)

        func serve(_ i: Int) -> Int {
            do {
                let r = try BlockRequest(copyingSlotAt: ring + i * 112, abi: .native, limits: limits)
                r.response(.okay).write(toSlot: ring + i * 112)
                r.write(toSlot: ring + i * 112)  // put the request back for the next round
                return 1
            } catch {
                return 0
            }
        }
        // The counter itself works: an array allocates.
        let probe = cmalloc_count_this_thread()
        withExtendedLifetime([Int](repeating: 7, count: 100)) {}
        #expect(cmalloc_count_this_thread() > probe || cmalloc_counting_enabled() == 0)
        var served = 0
        for i in 0..<4 { served += serve(i) }  // warm-up: lazy globals (layouts) initialise here
        let before = cmalloc_count_this_thread()
        for round in 0..<1000 { served += serve(round % 4) }
        let allocations = cmalloc_count_this_thread() - before
        #expect(served == 1004)
        #expect(allocations == 0 || cmalloc_counting_enabled() == 0, "\(allocations) allocations in 1000 decode/respond rounds")
    }
}
