import CTap
import Testing
import XenNetProtocol
@testable import XenNetTap

/// Frames built byte by byte, so the header walk is checked against known offsets.
enum Frames {
    static func ethernet(type: UInt16, vlan: Bool = false) -> [UInt8] {
        var f = [UInt8](repeating: 0xaa, count: 12)
        if vlan { f += [0x81, 0x00, 0x00, 0x05] }
        return f + [UInt8(type >> 8), UInt8(type & 0xff)]
    }
    static func ipv4(proto: UInt8, ihl: UInt8 = 5) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: Int(ihl) * 4)
        h[0] = 0x40 | ihl
        h[9] = proto
        return h
    }
    static func ipv6(next: UInt8) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 40)
        h[0] = 0x60
        h[6] = next
        return h
    }
    static func tcp(dataOffsetWords: UInt8 = 5) -> [UInt8] {
        // At least the 20 fixed bytes, so a lying data offset can be written.
        var h = [UInt8](repeating: 0, count: max(20, Int(dataOffsetWords) * 4))
        h[12] = dataOffsetWords << 4
        return h
    }
    static let udp = [UInt8](repeating: 0, count: 8)
}

@Suite(.timeLimit(.minutes(5)))
struct VirtioNetHeaderTests {
    private func header(_ frame: [UInt8], blank: Bool = true, gso: NetExtraInfo? = nil) -> VirtioNetHeader? {
        frame.withUnsafeBytes { VirtioNetHeader(checksumBlank: blank, dataValidated: false, gso: gso, frame: $0) }
    }

    @Test func headerIsTheKernelsTenBytes() {
        #expect(VirtioNetHeader.size == 10)
    }

    @Test func checksumPositionComesFromTheFramesHeaders() throws {
        let v4tcp = try #require(header(Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 6) + Frames.tcp() + [1, 2, 3]))
        #expect(v4tcp.flags == VirtioNetHeader.needsChecksum && v4tcp.checksumStart == 34 && v4tcp.checksumOffset == 16)
        let v4opts = try #require(header(Frames.ethernet(type: 0x0800, vlan: true) + Frames.ipv4(proto: 17, ihl: 7) + Frames.udp))
        #expect(v4opts.checksumStart == 18 + 28 && v4opts.checksumOffset == 6)
        // IPv6 with a hop-by-hop header of 8 bytes before TCP.
        let hop: [UInt8] = [6, 0, 0, 0, 0, 0, 0, 0]
        let v6 = try #require(header(Frames.ethernet(type: 0x86DD) + Frames.ipv6(next: 0) + hop + Frames.tcp(dataOffsetWords: 8)))
        #expect(v6.checksumStart == 14 + 40 + 8)
    }

    @Test func gsoBecomesTheKernelsSegmentationRequest() throws {
        let frame = Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 6) + Frames.tcp(dataOffsetWords: 8) + [UInt8](repeating: 7, count: 3000)
        let h = try #require(header(frame, gso: .gso(size: 1448, type: .tcpv4, features: 0)))
        #expect(Int32(h.gsoType) == VIRTIO_NET_HDR_GSO_TCPV4 && h.gsoSize == 1448 && h.headerLength == 34 + 32)
        let back = try #require(h.netifOffload)
        #expect(back.checksumBlank && back.dataValidated && back.gso == .gso(size: 1448, type: .tcpv4, features: 0))
        // GSO for the wrong IP version, or on UDP, is not eligible.
        #expect(header(frame, gso: .gso(size: 1448, type: .tcpv6, features: 0)) == nil)
        #expect(header(Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 17) + Frames.udp, gso: .gso(size: 1000, type: .tcpv4, features: 0)) == nil)
    }

    @Test func framesThatLieAboutTheirHeadersAreRefused() {
        let truncated: [[UInt8]] = [
            [], Array(Frames.ethernet(type: 0x0800).prefix(13)),
            Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 6),                  // no TCP header
            Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 6, ihl: 15),         // options past the end
            Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 6) + Frames.tcp(dataOffsetWords: 2),
            Frames.ethernet(type: 0x0806) + [UInt8](repeating: 0, count: 28),        // ARP: no checksum to finish
            Frames.ethernet(type: 0x0800) + Frames.ipv4(proto: 1) + [8, 0, 0, 0],    // ICMP
            Frames.ethernet(type: 0x86DD) + Frames.ipv6(next: 0) + [0, 200],         // extension header past the end
        ]
        for frame in truncated { #expect(header(frame) == nil, "\(frame.count) bytes") }
        // Asking for nothing needs no parsing at all.
        #expect(header([], blank: false) == .plain)
    }

    @Test func netifViewOfKernelHeaders() throws {
        var h = VirtioNetHeader.plain
        #expect(h.netifOffload! == (false, false, nil))
        h.flags = VirtioNetHeader.dataValid
        #expect(h.netifOffload! == (false, true, nil))
        h.gsoType = UInt8(VIRTIO_NET_HDR_GSO_UDP)
        #expect(h.netifOffload == nil)
        h.gsoType = UInt8(VIRTIO_NET_HDR_GSO_TCPV6) | UInt8(VIRTIO_NET_HDR_GSO_ECN)
        h.gsoSize = 1428
        #expect(h.netifOffload?.gso == .gso(size: 1428, type: .tcpv6, features: 0))
    }
}
