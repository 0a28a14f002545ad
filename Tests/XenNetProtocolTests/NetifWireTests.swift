import CXen
import Testing
import XenABI
@testable import XenNetProtocol

/// Slot layouts and flag values against netif.h's own diagrams and macros.
@Suite(.timeLimit(.minutes(5)))
struct NetifWireTests {
    private func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    @Test func slotSizesMatchTheHeader() {
        #expect(MemoryLayout<netif_tx_request>.size == 12)   // "Ring slot size is 12 octets"
        #expect(MemoryLayout<netif_rx_response>.size == 8)   // "Ring slot size is 8 octets"
        #expect(MemoryLayout<netif_extra_info>.size == 8)    // fits both tx and rx slots
        #expect(MemoryLayout<netif_tx_response>.size == 4)
        #expect(MemoryLayout<netif_rx_request>.size == 8)
    }

    @Test func txAndRxFlagsDifferInBitOrder() {
        #expect(NetTxFlags.checksumBlank.rawValue == 1 && NetRxFlags.checksumBlank.rawValue == 2)
        #expect(NetTxFlags.dataValidated.rawValue == 2 && NetRxFlags.dataValidated.rawValue == 1)
        #expect(NetTxFlags.moreData.rawValue == 4 && NetRxFlags.moreData.rawValue == 4)
        #expect(NetTxFlags.extraInfo.rawValue == 8 && NetRxFlags.extraInfo.rawValue == 8)
        #expect(NetifStatus.null.rawValue == 1 && NetifStatus.dropped.rawValue == -2)
    }

    @Test func gsoExtraFollowsTheDiagram() throws {
        // |type |flags| size      |type | pad | features  |
        let raw = NetExtraInfo.gso(size: 0x05B4, type: .tcpv6, features: 0x0102).encoded(more: true)
        #expect(bytes(raw) == [1, 1, 0xB4, 0x05, 2, 0, 0x02, 0x01])
        #expect(try NetExtraInfo(validating: raw) == .gso(size: 0x05B4, type: .tcpv6, features: 0x0102))
        #expect(NetExtraInfo.hasMore(raw))
    }

    @Test func multicastAndHashExtrasFollowTheDiagram() throws {
        let mac = try #require(MACAddress("00:16:3e:0a:0b:ff"))
        let add = NetExtraInfo.multicastAdd(mac).encoded(more: false)
        #expect(bytes(add) == [2, 0, 0x00, 0x16, 0x3e, 0x0a, 0x0b, 0xff])
        // |type |flags|htype| alg |LSB ---- value ---- MSB|
        let hash = NetExtraInfo.hash(type: 1, algorithm: 1, value: 0x1122_3344).encoded(more: false)
        #expect(bytes(hash) == [4, 0, 1, 1, 0x44, 0x33, 0x22, 0x11])
        #expect(try NetExtraInfo(validating: hash) == .hash(type: 1, algorithm: 1, value: 0x1122_3344))
    }

    @Test func extraOverlaysATxSlotWithTheRestZero() {
        let slot = NetExtraInfo.slot(NetExtraInfo.gso(size: 1448, type: .tcpv4, features: 0).encoded(more: false),
                                     as: netif_tx_request.self)
        let b = bytes(slot)
        #expect(b.count == 12 && b[0] == 1 && b[8...].allSatisfy { $0 == 0 })
    }

    @Test func badExtrasAreRefused() {
        var raw = netif_extra_info()
        for type: UInt8 in [0, 5, 200] {
            raw.type = type
            #expect(throws: NetProtocolError.self) { try NetExtraInfo(validating: raw) }
        }
        raw = NetExtraInfo.gso(size: 1, type: .tcpv4, features: 0).encoded(more: false)
        raw.u.gso.type = 9
        #expect((try? NetExtraInfo(validating: raw)) == nil)
        raw.u.gso.type = 1
        raw.u.gso.size = 0
        #expect((try? NetExtraInfo(validating: raw)) == nil)
    }

    @Test func macAddressesParseStrictly() {
        #expect(MACAddress("00:16:3e:12:34:56")?.description == "00:16:3e:12:34:56")
        // A peer writes `mac`: a sign is no hex digit, whatever UInt8(_:radix:) accepts.
        #expect(MACAddress("+f:16:3e:12:34:56") == nil)
        #expect(MACAddress("00:16:3e:12:34:-0") == nil)
        #expect(MACAddress("00:16:3e:12:34:５６") == nil)
        for bad in ["", "00:16:3e:12:34", "00:16:3e:12:34:56:78", "0:16:3e:12:34:56", "zz:16:3e:12:34:56"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
    }
}
