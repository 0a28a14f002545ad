import CXen
import TestSupport
import Testing
import XenABI
@testable import XenBlockProtocol

/// Random and mutated slots: decoding never traps, and whatever is accepted obeys every
/// rule and survives an encode/decode round trip unchanged.
@Suite(.timeLimit(.minutes(5)))
struct RandomSlotTests {
    func checkInvariants(_ r: BlockRequest, _ limits: BlockDeviceLimits) {
        func inRange(_ sector: UInt64, _ segments: BlockSegments) {
            #expect(segments.allSatisfy { $0.firstSector <= $0.lastSector && Int($0.lastSector) < limits.sectorsPerPage })
            #expect(limits.contains(sector: sector, count: segments.sectorCount))
        }
        switch r.operation {
        case .read(let s, let segs): #expect((1...11).contains(segs.count)); inRange(s, segs)
        case .write(let s, let segs): #expect((1...11).contains(segs.count) && !limits.readOnly); inRange(s, segs)
        case .flush(_, let segs), .writeBarrier(_, let segs): #expect(segs.isEmpty || limits.acceptsDataOnFlush)
        case .discard(let s, let n, let secure):
            #expect(limits.discard && !limits.readOnly && limits.contains(sector: s, count: n) && (!secure || limits.secureDiscard))
        case .indirect(let i):
            #expect(i.segmentCount >= 1 && i.segmentCount <= limits.maxIndirectSegments && i.sector < limits.sectors)
            #expect(i.operation == .read || (i.operation == .write && !limits.readOnly))
        }
    }

    @Test(arguments: BlkifABI.allCases)
    func randomSlotsNeverTrap(abi: BlkifABI) throws {
        var rng = SplitMix(seed: abi == .x86_32 ? 32 : 64)
        let limitsSet = [
            BlockDeviceLimits(sectors: 1 << 16, flush: true, barrier: true, discard: true, maxIndirectSegments: 64),
            BlockDeviceLimits(sectors: .max, readOnly: true, flush: true, barrier: true, discard: true, secureDiscard: true, maxIndirectSegments: 4096, acceptsDataOnFlush: true),
            BlockDeviceLimits(sectors: 8, sectorSize: 4096, flush: false, barrier: false, discard: false),
        ]
        var accepted = 0
        for round in 0..<30_000 {
            var bytes = [UInt8](repeating: 0, count: 112)
            if round % 3 == 0 {
                for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
            } else {
                // A plausible request with a few bytes flipped: reaches the deeper checks.
                let op = UInt8.random(in: 0...7, using: &rng)
                bytes = CSlot.rw(abi, op: op, nseg: UInt8.random(in: 0...12, using: &rng), id: rng.next(),
                                 sector: UInt64.random(in: 0...70_000, using: &rng),
                                 segs: (0..<11).map { _ in (UInt32.random(in: 0...9, using: &rng), UInt8.random(in: 0...3, using: &rng), UInt8.random(in: 3...8, using: &rng)) }).bytes
                if op == 5 || op == 6 {
                    bytes[1] = UInt8.random(in: 0...2, using: &rng)
                    bytes[2] = UInt8.random(in: 0...2, using: &rng)
                }
                for _ in 0..<Int.random(in: 0...2, using: &rng) {
                    bytes[Int.random(in: 0..<abi.requestSize, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            let limits = limitsSet[round % limitsSet.count]
            let slot = CSlot(bytes: bytes)
            guard let r = try? slot.decode(abi, limits) else { continue }
            accepted += 1
            checkInvariants(r, limits)
            var again = [UInt8](repeating: 0, count: 112)
            again.withUnsafeMutableBytes { r.write(toSlot: $0.baseAddress!, abi: abi) }
            #expect(try CSlot(bytes: again).decode(abi, limits) == r)
        }
        #expect(accepted > 500)  // the generator does reach valid requests
    }
}
