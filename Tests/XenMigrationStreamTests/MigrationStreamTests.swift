import Testing
import XenABI
import XenMigrationStream

/// Byte-exact vectors of the stream's header and every record (checksums computed
/// independently, with Python's bitwise CRC-32C), round trips, and hostile bytes
/// refused with the right code.
@Suite struct MigrationStreamTests {
    private func hex(_ s: String) -> [UInt8] {
        let d = Array(s.filter { !$0.isWhitespace })
        return stride(from: 0, to: d.count, by: 2).map { UInt8(String(d[$0...$0 + 1]), radix: 16)! }
    }

    private let domain = MigrationRecord.domain(MigrationDomainInfo(domain: DomainID(7), frameCount: 65536, grantFrames: 32, name: "web"))

    @Test func crc32cMatchesTheCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test func headerAndRecordsAreByteExact() throws {
        #expect(MigrationStream.header() == hex("58454e50564d4947 01000000 00100000 00000000 8efac96d"))
        #expect(try MigrationStream.encode(.end) == hex("00000000 00000000 8ab2288c"))
        #expect(try MigrationStream.encode(domain) == hex("01000000 13000000 0700 0300 20000000 0000010000000000 776562 bd41e4e1"))
        let grant = MigrationGrantEntry(ref: GrantRef(8), flags: 5, grantee: .dom0, frame: FrameNumber(12))
        #expect(try MigrationStream.encode(.grants([grant])) == hex("03000000 14000000 01000000 08000000 0500 0000 0c00000000000000 b815615a"))
        let channels = [
            MigrationEventChannel(port: EventPort(3), binding: .unbound(remote: .dom0)),
            MigrationEventChannel(port: EventPort(4), binding: .interdomain(remote: .dom0, remotePort: EventPort(17))),
        ]
        #expect(try MigrationStream.encode(.eventChannels(channels))
            == hex("04000000 1c000000 02000000 03000000 0100 0000 00000000 04000000 0200 0000 11000000 48fb2a21"))
        let node = MigrationStoreEntry(path: "/local/domain/7/name", value: Array("web".utf8), permissions: "n0")
        #expect(try MigrationStream.encode(.store([node]))
            == hex("05000000 25000000 01000000 1400 0200 03000000") + Array("/local/domain/7/name".utf8) + Array("n0web".utf8) + hex("ca38ac57"))
        let device = MigrationDevice(type: "vbd", id: 51712, keys: [.init("mode", "w")])
        #expect(try MigrationStream.encode(.device(device)) == hex("06000000 14000000 0300 0100 00ca0000 766264 0400 0100 6d6f6465 77 be908f9b"))
        let batch = try MigrationPageBatch(frames: [FrameNumber(5)], data: Array(repeating: 0xAB, count: 4096))
        let pages = try MigrationStream.encode(.pages(batch))
        #expect(pages.count == 4124)
        #expect(Array(pages.prefix(24)) == hex("02000000 10100000 01000000 00000000 0500000000000000"))
        #expect(Array(pages.suffix(4)) == hex("4252d053"))
    }

    @Test func everyRecordRoundTrips() throws {
        var data = [UInt8](repeating: 0, count: 3 * 4096)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12) }
        let records: [MigrationRecord] = [
            domain,
            .pages(try MigrationPageBatch(frames: [FrameNumber(9), FrameNumber(0), FrameNumber(65535)], data: data)),
            .grants((8..<40).map { MigrationGrantEntry(ref: GrantRef($0), flags: 1, grantee: .dom0, frame: FrameNumber(UInt64($0) * 3)) }),
            .eventChannels([MigrationEventChannel(port: EventPort(1), binding: .interdomain(remote: .dom0, remotePort: EventPort(9)))]),
            .store([
                MigrationStoreEntry(path: "/local/domain/7", value: [], permissions: "n0r7"),
                MigrationStoreEntry(path: "/local/domain/7/data", value: [0, 255, 10], permissions: "b7"),
            ]),
            .device(MigrationDevice(type: "vif", id: 0, keys: [.init("mac", "00:16:3e:00:00:01"), .init("bridge", "xenbr0")])),
            .end,
        ]
        let bytes = try MigrationStream.encode(records)
        #expect(try MigrationStream.decode(bytes) == records)

        // Fed a byte at a time, the decoder gives the same records as they complete.
        var decoder = MigrationStreamDecoder()
        var seen: [MigrationRecord] = []
        for b in bytes {
            decoder.feed([b])
            while let r = try decoder.next() { seen.append(r) }
        }
        try decoder.finish()
        #expect(seen == records)
        #expect(decoder.isFinished)
    }

    @Test func valuesNoDecoderWouldTakeAreRefusedWhenEncoding() throws {
        #expect(throws: MigrationStreamError.self) { try MigrationPageBatch(frames: [], data: []) }
        #expect(throws: MigrationStreamError.self) { try MigrationPageBatch(frames: [FrameNumber(1)], data: [1]) }
        #expect(throws: MigrationStreamError.self) {
            try MigrationPageBatch(frames: [FrameNumber(1), FrameNumber(1)], data: Array(repeating: 0, count: 8192))
        }
        #expect(throws: MigrationStreamError.self) {
            try MigrationPageBatch(frames: (0..<1025).map { FrameNumber($0) }, data: Array(repeating: 0, count: 1025 * 4096))
        }
        let long = String(repeating: "a", count: 3073)
        #expect(throws: MigrationStreamError.self) { try MigrationStream.encode(.store([MigrationStoreEntry(path: long, value: [], permissions: "")])) }
        #expect(throws: MigrationStreamError.self) { try MigrationStream.encode(.device(MigrationDevice(type: "v\0bd", id: 0, keys: []))) }
        #expect(throws: MigrationStreamError.self) { try MigrationStream.encode([.end]) }
        #expect(throws: MigrationStreamError.self) { try MigrationStream.encode([domain]) }
    }

    // MARK: Hostile streams

    private func code(_ bytes: [UInt8]) -> MigrationStreamError.Code? {
        do {
            _ = try MigrationStream.decode(bytes)
            return nil
        } catch {
            return error.code
        }
    }

    /// A record with a correct checksum around whatever body a test wants.
    private func framed(_ type: UInt32, _ body: [UInt8]) -> [UInt8] {
        var r: [UInt8] = []
        for v in [type, UInt32(body.count)] { r += withUnsafeBytes(of: v.littleEndian, Array.init) }
        r += body
        return r + withUnsafeBytes(of: CRC32C.checksum(r).littleEndian, Array.init)
    }

    private func stream(_ records: [UInt8]...) throws -> [UInt8] {
        try MigrationStream.header() + MigrationStream.encode(domain) + records.flatMap { $0 } + MigrationStream.encode(.end)
    }

    @Test func headerFaultsAreRefused() throws {
        let good = try MigrationStream.encode([domain, .end])
        #expect(code(Array("NOTASTREAM".utf8)) == .badMagic)
        var wrongVersion = MigrationStream.header()
        wrongVersion[8] = 2
        #expect(code(wrongVersion + Array(good.dropFirst(24))) == .badChecksum)
        // A version 2 header with a valid checksum is refused for its version.
        var v2 = Array(MigrationStream.header().prefix(20))
        v2[8] = 2
        v2 += withUnsafeBytes(of: CRC32C.checksum(v2).littleEndian, Array.init)
        #expect(code(v2 + Array(good.dropFirst(24))) == .unsupportedVersion)
        var pageSize = Array(MigrationStream.header().prefix(20))
        pageSize[13] = 0x20
        pageSize += withUnsafeBytes(of: CRC32C.checksum(pageSize).littleEndian, Array.init)
        #expect(code(pageSize + Array(good.dropFirst(24))) == .badValue)
    }

    @Test func everyTruncationIsAnErrorNeverATrap() throws {
        let good = try MigrationStream.encode([
            domain, .pages(try MigrationPageBatch(frames: [FrameNumber(1)], data: Array(repeating: 1, count: 4096))), .end,
        ])
        for n in 0..<good.count {
            #expect(code(Array(good.prefix(n))) != nil, "a stream cut at \(n) bytes")
        }
        #expect(code(good + [0]) == .badOrder)
    }

    @Test func everyFlippedBitIsCaught() throws {
        let good = try MigrationStream.encode([domain, .store([MigrationStoreEntry(path: "/a", value: [1], permissions: "n0")]), .end])
        for i in good.indices {
            var bad = good
            bad[i] ^= 0x10
            #expect(code(bad) != nil, "bit 4 of byte \(i) flipped")
        }
    }

    @Test func oversizedAndInconsistentRecordsAreRefusedBeforeTheyAreBuffered() throws {
        // A length of 4 GiB: refused from its 8-byte header alone.
        var decoder = MigrationStreamDecoder()
        decoder.feed(MigrationStream.header() + (try MigrationStream.encode(domain)) + [2, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
        _ = try decoder.next()
        #expect(throws: MigrationStreamError.self) { try decoder.next() }
        #expect(throws: MigrationStreamError.self) { try decoder.next() }

        // Counts that promise more than the body holds.
        #expect(code(try stream(framed(2, [0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0]))) == .inconsistentLength)
        #expect(code(try stream(framed(3, [0xFF, 0xFF, 0xFF, 0xFF]))) == .inconsistentLength)
        #expect(code(try stream(framed(4, [2, 0, 0, 0] + Array(repeating: 0, count: 12)))) == .inconsistentLength)
        #expect(code(try stream(framed(5, [0, 0, 0, 1]))) == .inconsistentLength)
        // A page batch whose reserved word is set, and one naming a frame twice.
        #expect(code(try stream(framed(2, [1, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0] + Array(repeating: 0, count: 4096)))) == .badValue)
        let twice: [UInt8] = [2, 0, 0, 0, 0, 0, 0, 0] + [5, 0, 0, 0, 0, 0, 0, 0] + [5, 0, 0, 0, 0, 0, 0, 0]
        #expect(code(try stream(framed(2, twice + Array(repeating: 0, count: 8192)))) == .badValue)
        // An event channel of an unknown kind; a store value over 4096 bytes; a device with 257 keys.
        #expect(code(try stream(framed(4, [1, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]))) == .badValue)
        #expect(code(try stream(framed(5, [1, 0, 0, 0, 1, 0, 0, 0, 0x01, 0x10, 0, 0, 0x2F]))) == .tooLong)
        #expect(code(try stream(framed(6, [0, 0, 0x01, 0x01, 0, 0, 0, 0]))) == .tooLong)
        // A path that is not UTF-8, and one with NUL.
        #expect(code(try stream(framed(5, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xC3, 0x28]))) == .badValue)
        #expect(code(try stream(framed(5, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x2F, 0]))) == .badValue)
        // An unknown record type, bytes left over in a record, a reserved domain id.
        #expect(code(try stream(framed(99, []))) == .unknownRecord)
        #expect(code(try stream(framed(0, [0]))) == .inconsistentLength)
        #expect(code(MigrationStream.header() + framed(1, [0xF0, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])) == .badValue)
    }

    @Test func recordsOutOfOrderAreRefused() throws {
        let header = MigrationStream.header()
        #expect(code(header + (try MigrationStream.encode(.end))) == .badOrder)
        #expect(code(header + (try MigrationStream.encode(.grants([])))) == .badOrder)
        #expect(code(header + (try MigrationStream.encode(domain)) + (try MigrationStream.encode(domain))) == .badOrder)
        #expect(code(try MigrationStream.encode([domain, .end]) + (try MigrationStream.encode(.end))) == .badOrder)
    }
}
