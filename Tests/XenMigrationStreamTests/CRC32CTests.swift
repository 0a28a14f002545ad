import Testing
@testable import XenMigrationStream

/// The CPU's crc32 instruction and the table give the same checksum at every length and
/// alignment, and a checksum continued over pieces equals the one over the whole.
@Suite struct CRC32CTests {
    private let bytes: [UInt8] = {
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<9000).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }()

    @Test func bothWaysGiveTheCheckValue() {
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { CRC32C.softwareUpdate(0, $0) } == 0xE306_9283)
        #expect(check.withUnsafeBytes { CRC32C.update(0, $0) } == 0xE306_9283)
    }

    @Test func theInstructionMatchesTheTableAtEveryLengthAndAlignment() {
        bytes.withUnsafeBytes { all in
            for offset in 0..<8 {
                for length in Array(0...64) + [255, 4095, 4096, 4097, 8191] {
                    let piece = UnsafeRawBufferPointer(rebasing: all[offset..<offset + length])
                    #expect(CRC32C.update(0, piece) == CRC32C.softwareUpdate(0, piece), "offset \(offset) length \(length)")
                }
            }
        }
    }

    @Test func aChecksumContinuesOverPieces() {
        bytes.withUnsafeBytes { all in
            let whole = CRC32C.update(0, all)
            for split in [1, 7, 8, 13, 4096, 8999] {
                let first = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: all[0..<split]))
                #expect(CRC32C.update(first, UnsafeRawBufferPointer(rebasing: all[split...])) == whole, "split at \(split)")
            }
        }
    }

    @Test func thisMachineUsesTheInstruction() {
        // The CI machines are x86-64 with SSE4.2; elsewhere the table serves.
        #if arch(x86_64)
        #expect(CRC32C.usesHardware)
        #endif
    }
}
