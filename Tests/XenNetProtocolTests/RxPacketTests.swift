import CXen
import Testing
import XenABI
@testable import XenNetProtocol

@Suite(.timeLimit(.minutes(5)))
struct RxPacketTests {
    /// Lays a packet out as a backend does, with request ids equal to ring slots.
    private func responses(length: Int, extras: [NetExtraInfo], flags: NetRxFlags = [], firstSlot: UInt32 = 0) throws -> [netif_rx_response] {
        let layout = try #require(RxPacketLayout(length: length, extraCount: extras.count))
        return (0 ..< layout.slotCount).map { k in
            switch layout.slot(k) {
            case .data: layout.response(slot: k, id: UInt16(truncatingIfNeeded: firstSlot &+ UInt32(k)), flags: flags)
            case .extra(let i): RxPacketLayout.extraResponse(extras, index: i)
            }
        }
    }

    @Test func packetsOf60BytesTo64KiBRoundTrip() throws {
        var parser = RxPacketParser()
        for length in [60, 61, 1500, 4095, 4096, 4097, 9000, 65535, 18 * 4096] {
            for extras in [[], [NetExtraInfo.gso(size: 1448, type: .tcpv4, features: 0)]] {
                let slots = try responses(length: length, extras: extras, flags: .dataValidated, firstSlot: UInt32.max - 3)
                var complete = false
                for (k, rsp) in slots.enumerated() {
                    complete = try parser.consume(rsp, at: RingIndex(UInt32.max - 3) + UInt32(k))
                    #expect(complete == (k == slots.count - 1))
                }
                #expect(complete && parser.totalSize == length && parser.extras == extras)
                #expect(parser.flags.contains(.dataValidated))
                #expect(parser.slots.count == slots.count)
                // Data lands in the buffers of the slots that are not extras.
                let dataSlots = parser.slots.enumerated().filter { $0.offset == 0 || $0.offset > extras.count }.map(\.element)
                #expect(parser.fragments.map(\.slot) == dataSlots)
            }
        }
    }

    @Test func layoutRefusesWhatCannotBeDelivered() {
        #expect(RxPacketLayout(length: 0) == nil)
        #expect(RxPacketLayout(length: 18 * 4096 + 1) == nil)
        #expect(RxPacketLayout(length: 100, extraCount: 5) == nil)
        let layout = RxPacketLayout(length: 5000, extraCount: 1)!
        #expect(layout.slotCount == 3)
        #expect(layout.slot(0) == .data(range: 0 ..< 4096))
        #expect(layout.slot(1) == .extra(index: 0))
        #expect(layout.slot(2) == .data(range: 4096 ..< 5000))
    }

    @Test func hostileResponsesAreRefused() {
        var parser = RxPacketParser()
        #expect(throws: NetProtocolError(.errorStatus, "status error")) {
            try parser.consume(netif_rx_response(id: 0, offset: 0, flags: 0, status: -1), at: RingIndex(0))
        }
        #expect((try? parser.consume(netif_rx_response(id: 0, offset: 4000, flags: 0, status: 200), at: RingIndex(1))) == nil)
        #expect((try? parser.consume(netif_rx_response(id: 0, offset: 0, flags: NetRxFlags.gsoPrefix.rawValue, status: 60), at: RingIndex(2))) == nil)
        // An endless more_data chain stops at the slot limit.
        let more = netif_rx_response(id: 0, offset: 0, flags: NetRxFlags.moreData.rawValue, status: 100)
        var refusal: NetProtocolError?
        for k in 0 ..< 40 {
            do { _ = try parser.consume(more, at: RingIndex(UInt32(10 + k))) } catch { refusal = error; break }
        }
        #expect(refusal?.code == .tooManySlots)
        // And the parser carries on with the next packet.
        #expect((try? parser.consume(netif_rx_response(id: 0, offset: 0, flags: 0, status: 60), at: RingIndex(99))) == true)
    }
}
