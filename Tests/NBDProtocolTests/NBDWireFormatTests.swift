import NBDProtocol
import Testing

/// Byte-exact vectors of proto.md's messages, and hostile bytes refused with the right code.
@Suite struct NBDWireFormatTests {
    private func hex(_ s: String) -> [UInt8] {
        let digits = s.filter { !$0.isWhitespace }
        return stride(from: 0, to: digits.count, by: 2).map { i in
            let a = digits.index(digits.startIndex, offsetBy: i)
            return UInt8(digits[a...digits.index(after: a)], radix: 16)!
        }
    }

    @Test func theGreetingIsNBDMAGICThenIHAVEOPTThenTheFlags() throws {
        let g = NBDServerGreeting(flags: [.fixedNewstyle, .noZeroes])
        #expect(g.encoded() == Array("NBDMAGICIHAVEOPT".utf8) + [0x00, 0x03])
        #expect(try NBDServerGreeting(decoding: g.encoded()) == g)
        // Oldstyle: cliserv_magic where IHAVEOPT belongs.
        let oldstyle = Array("NBDMAGIC".utf8) + hex("0000420281861253") + [0, 0]
        #expect(throws: NBDProtocolError.self) { try NBDServerGreeting(decoding: oldstyle) }
    }

    @Test func clientFlagsMustBeKnownAndOffered() throws {
        let offered: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]
        #expect(try NBDClientGreeting(decoding: [0, 0, 0, 3], offered: offered).flags == [.fixedNewstyle, .noZeroes])
        #expect(NBDClientGreeting(flags: [.fixedNewstyle]).encoded() == [0, 0, 0, 1])
        let unknown = #expect(throws: NBDProtocolError.self) { try NBDClientGreeting(decoding: [0, 0, 0, 4], offered: offered) }
        #expect(unknown?.code == .unknownFlags)
        let notOffered = #expect(throws: NBDProtocolError.self) { try NBDClientGreeting(decoding: [0, 0, 0, 2], offered: .fixedNewstyle) }
        #expect(notOffered?.code == .unknownFlags)
        #expect(throws: NBDProtocolError.self) { try NBDClientGreeting(decoding: [0, 0, 3], offered: offered) }
    }

    @Test func anOptionHeaderIsIHAVEOPTOptionLength() throws {
        let h = NBDOptionHeader(option: .go, length: 10)
        #expect(h.encoded() == hex("49484156454F5054 00000007 0000000A"))
        #expect(try NBDOptionHeader(decoding: h.encoded()) == h)
        let huge = NBDOptionHeader(option: .exportName, length: 0xFFFF_FFFF).encoded()
        let e = #expect(throws: NBDProtocolError.self) { try NBDOptionHeader(decoding: huge) }
        #expect(e?.code == .tooLong)
        var bad = h.encoded()
        bad[0] ^= 1
        #expect((#expect(throws: NBDProtocolError.self) { try NBDOptionHeader(decoding: bad) })?.code == .badMagic)
    }

    @Test func optionRepliesCarryTheMagicTheOptionTheTypeAndTheData() throws {
        let ack = NBDOptionReply(option: .go, type: .ack)
        #expect(try ack.encoded() == hex("0003E889045565A9 00000007 00000001 00000000"))
        let unsup = NBDOptionReply.error(.errUnsupported, to: .structuredReply, "no")
        #expect(try unsup.encoded() == hex("0003E889045565A9 00000008 80000001 00000002 6E6F"))
        let header = try NBDOptionReply.decodeHeader(Array(try unsup.encoded().prefix(20)))
        #expect(header.option == .structuredReply && header.type == .errUnsupported && header.length == 2)
        #expect(NBDOptionReplyType.errBlockSizeRequired.rawValue == 0x8000_0008)
        #expect(NBDOptionReplyType.errUnknown.isError && !NBDOptionReplyType.info.isError)
    }

    @Test func infoItemsHaveTheirExactLayouts() throws {
        let export = NBDInfo.export(size: 64 << 20, flags: [.hasFlags, .sendFlush, .sendFUA])
        #expect(try export.encoded() == hex("0000 0000000004000000 000D"))
        let sizes = NBDInfo.blockSize(NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 32 << 20))
        #expect(try sizes.encoded() == hex("0003 00000200 00001000 02000000"))
        #expect(try NBDInfo.name("xvda").encoded() == hex("0001 78766461"))
        for item in [export, sizes, .name("xvda"), .description("a disk"), .unknown(NBDInfoType(rawValue: 9), [1, 2])] {
            #expect(try NBDInfo(decoding: item.encoded()) == item)
        }
        // A wrong length for a fixed-size type is refused, not read past.
        #expect(throws: NBDProtocolError.self) { try NBDInfo(decoding: hex("0000 0000000004000000")) }
        #expect(throws: NBDProtocolError.self) { try NBDInfo(decoding: hex("0003 00000200 00001000")) }
    }

    @Test func blockSizeConstraintsFollowProtoMd() throws {
        try NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 32 << 20).validate(exportSize: 1 << 30)
        try NBDBlockSizeConstraints(minimum: 1, preferred: 4096, maximum: .max).validate(exportSize: 1 << 30)
        for bad in [NBDBlockSizeConstraints(minimum: 0, preferred: 4096, maximum: 1 << 20),
                    NBDBlockSizeConstraints(minimum: 768, preferred: 4096, maximum: 1 << 20),
                    NBDBlockSizeConstraints(minimum: 1 << 17, preferred: 1 << 17, maximum: 1 << 20),
                    NBDBlockSizeConstraints(minimum: 512, preferred: 3000, maximum: 1 << 20),
                    NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 1000),
                    NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 2048)] {
            let e = #expect(throws: NBDProtocolError.self) { try bad.validate(exportSize: 1 << 30) }
            #expect(e?.code == .badBlockSizes)
        }
        // A tiny export may advertise a maximum below the preferred size.
        try NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 1024).validate(exportSize: 1024)
    }

    @Test func goDataIsANameAndAListOfInformationRequests() throws {
        let request = NBDInfoRequest(name: "xvda", requests: [.blockSize, .name])
        let bytes = try request.encoded()
        #expect(bytes == hex("00000004 78766461 0002 0003 0001"))
        #expect(try NBDInfoRequest(decoding: bytes) == request)
        #expect(try NBDInfoRequest(decoding: hex("00000000 0000")) == NBDInfoRequest(name: "", requests: []))
        // The name's length runs past the data; the count disagrees with what follows; a NUL; not UTF-8.
        for hostile in [hex("FFFFFFFF 0000"), hex("00000001 41 0002 0003"), hex("00000001 00 0000"), hex("00000001 FF 0000"), hex("0000")] {
            #expect(throws: NBDProtocolError.self) { try NBDInfoRequest(decoding: hostile) }
        }
    }

    @Test func theExportNameReplyHasZeroesUnlessNoZeroesWasAgreed() {
        let r = NBDExportNameReply(size: 1 << 20, flags: [.hasFlags, .readOnly], noZeroes: false)
        #expect(r.encoded() == hex("0000000000100000 0003") + [UInt8](repeating: 0, count: 124))
        #expect(NBDExportNameReply(size: 1 << 20, flags: .hasFlags, noZeroes: true).encoded() == hex("0000000000100000 0001"))
    }

    @Test func requestsAndSimpleRepliesAreByteExact() throws {
        let write = NBDRequest(flags: .fua, command: .write, handle: 0x0102_0304_0506_0708, offset: 4096, length: 65536)
        #expect(write.encoded() == hex("25609513 0001 0001 0102030405060708 0000000000001000 00010000"))
        #expect(try NBDRequest(decoding: write.encoded()) == write)
        var garbage = write.encoded()
        garbage[3] = 0
        #expect((#expect(throws: NBDProtocolError.self) { try NBDRequest(decoding: garbage) })?.code == .badMagic)
        #expect((#expect(throws: NBDProtocolError.self) { try NBDRequest(decoding: Array(write.encoded().prefix(27))) })?.code == .truncated)

        let reply = NBDSimpleReply(error: .noSpace, handle: 7)
        #expect(reply.encoded() == hex("67446698 0000001C 0000000000000007"))
        #expect(try NBDSimpleReply(decoding: reply.encoded()) == reply)
        var buffer = [UInt8](repeating: 0xEE, count: 16)
        buffer.withUnsafeMutableBytes { reply.encode(into: $0) }
        #expect(buffer == reply.encoded())
    }

    @Test func theNumbersAreProtoMdsNumbers() {
        #expect(NBDCommand.writeZeroes.rawValue == 6 && NBDCommand.trim.rawValue == 4 && NBDCommand.disconnect.rawValue == 2)
        #expect(NBDTransmissionFlags.canMultiConn.rawValue == 0x100 && NBDTransmissionFlags.sendWriteZeroes.rawValue == 0x40)
        #expect(NBDErrno.permission.rawValue == 1 && NBDErrno.io.rawValue == 5 && NBDErrno.invalid.rawValue == 22)
        #expect(NBDErrno.noSpace.rawValue == 28 && NBDErrno.shutdown.rawValue == 108)
        #expect(NBDOption.go.rawValue == 7 && NBDOption.info.rawValue == 6 && NBDOption.structuredReply.rawValue == 8)
        #expect(NBDCommandFlags.noHole.rawValue == 2)
    }
}
