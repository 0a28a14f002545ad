import CXen
import Testing
import XenABI
@testable import XenNetProtocol

@Suite(.timeLimit(.minutes(5)))
struct TxPacketTests {
    /// Encodes a packet the way a frontend does and collects the slots.
    private func slots(_ fragments: [TxFragmentRequest], extras: [NetExtraInfo] = [], flags: NetTxFlags = []) -> [netif_tx_request] {
        var out: [netif_tx_request] = []
        fragments.withUnsafeBufferPointer { TxPacketEncoder.encode(fragments: $0, extras: extras, flags: flags) { out.append($0) } }
        return out
    }

    private func req(gref: UInt32 = 1, offset: UInt16 = 0, flags: NetTxFlags = [], id: UInt16 = 0, size: UInt16) -> netif_tx_request {
        netif_tx_request(gref: gref, offset: offset, flags: flags.rawValue, id: id, size: size)
    }

    /// Feeds slots until a packet completes or fails; returns the parser and the error.
    private func parse(_ input: [netif_tx_request], maxSlots: Int = 18) -> (TxPacketParser, [Bool], NetProtocolError?) {
        var parser = TxPacketParser(maxSlots: maxSlots)
        var done: [Bool] = []
        for slot in input {
            do { done.append(try parser.consume(slot)) } catch { return (parser, done, error) }
        }
        return (parser, done, nil)
    }

    @Test func randomPacketsRoundTripThroughEncoderAndParser() throws {
        var rng = SystemRandomNumberGenerator()
        var parser = TxPacketParser()
        for _ in 0 ..< 500 {
            let count = Int.random(in: 1 ... 18, using: &rng)
            var fragments: [TxFragmentRequest] = []
            var total = 0
            for i in 0 ..< count {
                let offset = UInt16.random(in: 0 ... 4000, using: &rng)
                let size = UInt16.random(in: (i == 0 ? 14 : 0) ... (4096 - offset), using: &rng)
                guard total + Int(size) <= Netif.maxPacketSize else { break }
                total += Int(size)
                fragments.append(TxFragmentRequest(ref: GrantRef(UInt32(100 + i)), offset: offset, size: size, id: UInt16(i)))
            }
            let extras: [NetExtraInfo] = Bool.random(using: &rng) ? [.gso(size: 1448, type: .tcpv4, features: 0)] : []
            let encoded = slots(fragments, extras: extras, flags: .checksumBlank)
            #expect(encoded.count == fragments.count + extras.count)
            for (i, slot) in encoded.enumerated() {
                let complete = try parser.consume(slot)
                #expect(complete == (i == encoded.count - 1))
            }
            #expect(parser.totalSize == total)
            #expect(parser.extras == extras)
            #expect(parser.flags.contains(.checksumBlank))
            #expect(parser.fragments.map(\.size) == fragments.map(\.size))
            #expect(parser.fragments.map(\.ref) == fragments.map(\.ref))
            #expect(parser.responses.count == encoded.count)
            #expect(parser.responses.filter { $0 == .extra }.count == extras.count)
        }
    }

    @Test func everySlotOwesOneResponseInOrder() throws {
        let input = slots([TxFragmentRequest(ref: GrantRef(1), offset: 0, size: 100, id: 7),
                           TxFragmentRequest(ref: GrantRef(2), offset: 0, size: 50, id: 9)],
                          extras: [.gso(size: 1448, type: .tcpv4, features: 0)])
        let (parser, done, error) = parse(input)
        #expect(error == nil && done == [false, false, true])
        #expect(parser.responses == [.request(id: 7), .extra, .request(id: 9)])
        #expect(parser.fragments[0].size == 100)
    }

    @Test func tooSmallPacketsAreRefused() {
        for size: UInt16 in [0, 1, 13] {
            let (parser, _, error) = parse([req(size: size)])
            #expect(error?.code == .packetTooSmall)
            #expect(parser.responses == [.request(id: 0)])
        }
    }

    @Test func fragmentsMustStayInsideTheirPage() {
        #expect(parse([req(offset: 4000, size: 200)]).2?.code == .crossesPageBoundary)
        #expect(parse([req(offset: 4096, size: 14)]).2?.code == .crossesPageBoundary)
        #expect(parse([req(flags: .moreData, size: 5000), req(offset: 100, size: 4000)]).2?.code == .crossesPageBoundary)
        // The first fragment's real size is the total less the others.
        #expect(parse([req(offset: 4000, flags: .moreData, size: 200), req(size: 100)]).2?.code == .crossesPageBoundary)
        #expect(parse([req(offset: 3996, flags: .moreData, size: 200), req(size: 100)]).2 == nil)
    }

    @Test func laterFragmentsCannotExceedTheTotal() {
        let (_, _, error) = parse([req(flags: .moreData, size: 100), req(size: 101)])
        #expect(error?.code == .fragmentsExceedTotal)
    }

    @Test func aChainThatNeverEndsIsCutAtTheSlotLimit() {
        var input = [req(flags: .moreData, size: 65535)]
        input += Array(repeating: req(flags: .moreData, size: 1), count: 100)
        let (parser, _, error) = parse(input)
        #expect(error?.code == .tooManySlots)
        #expect(parser.responses.count == 19)  // the 18 accepted data slots and the refused one
        // 18 slots exactly is accepted (XEN_NETIF_NR_SLOTS_MIN).
        let ok = [req(flags: .moreData, size: 1000)] + Array(repeating: req(flags: .moreData, size: 1), count: 16) + [req(size: 1)]
        #expect(parse(ok).2 == nil && parse(ok).1.last == true)
    }

    @Test func badOrRepeatedExtrasAreRefused() {
        let gso = NetExtraInfo.slot(NetExtraInfo.gso(size: 1448, type: .tcpv4, features: 0).encoded(more: true), as: netif_tx_request.self)
        let error = parse([req(flags: .extraInfo, size: 100), gso, gso]).2
        #expect(error?.code == .duplicateExtra)
        var bad = netif_extra_info()
        bad.type = 0
        #expect(parse([req(flags: .extraInfo, size: 100), NetExtraInfo.slot(bad, as: netif_tx_request.self)]).2?.code == .badExtraType)
    }

    @Test func theParserRecoversAfterARefusedPacket() throws {
        var parser = TxPacketParser()
        #expect(throws: NetProtocolError.self) { try parser.consume(req(size: 3)) }
        #expect(try parser.consume(req(id: 5, size: 60)))
        #expect(parser.responses == [.request(id: 5)] && parser.totalSize == 60)
    }
}
