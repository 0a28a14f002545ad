import CTap
import XenNetProtocol

/// The header a TAP with `IFF_VNET_HDR` puts before each frame
/// (`struct virtio_net_hdr`, 10 bytes): how to finish the checksum and
/// whether to segment. It is the Linux side of netif's `csum_blank`,
/// `data_validated` and GSO extras, and this type converts between the two.
public struct VirtioNetHeader: Hashable, Sendable {
    /// `flags`: ``needsChecksum`` and/or ``dataValid``.
    public var flags: UInt8
    /// `gso_type`: `VIRTIO_NET_HDR_GSO_NONE`, `_TCPV4`, `_TCPV6`, optionally with `_ECN`.
    public var gsoType: UInt8
    /// `hdr_len`: bytes of Ethernet, IP and TCP headers to repeat in each segment.
    public var headerLength: UInt16
    /// `gso_size`: the payload bytes per segment (the MSS) when segmentation is asked for.
    public var gsoSize: UInt16
    /// `csum_start`: the offset in the frame where checksumming starts (the transport header).
    public var checksumStart: UInt16
    /// `csum_offset`: where, counted from `csum_start`, the checksum is stored.
    public var checksumOffset: UInt16

    /// `sizeof(struct virtio_net_hdr)`: the bytes before each frame on a TAP with a vnet header.
    public static let size = MemoryLayout<virtio_net_hdr>.size

    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum is still to be computed (netif's `csum_blank`).
    public static let needsChecksum = UInt8(VIRTIO_NET_HDR_F_NEEDS_CSUM)
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified (netif's `data_validated`).
    public static let dataValid = UInt8(VIRTIO_NET_HDR_F_DATA_VALID)

    /// A header that asks nothing: a complete, checksummed frame.
    public static let plain = VirtioNetHeader(flags: 0, gsoType: UInt8(VIRTIO_NET_HDR_GSO_NONE), headerLength: 0,
                                              gsoSize: 0, checksumStart: 0, checksumOffset: 0)

    /// A header from its fields, each as `struct virtio_net_hdr` holds it (host byte order).
    public init(flags: UInt8, gsoType: UInt8, headerLength: UInt16, gsoSize: UInt16, checksumStart: UInt16, checksumOffset: UInt16) {
        self.flags = flags
        self.gsoType = gsoType
        self.headerLength = headerLength
        self.gsoSize = gsoSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
    }

    /// Reads the header at the start of a frame read from the TAP.
    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= Self.size)
        let raw = bytes.loadUnaligned(as: virtio_net_hdr.self)
        self.init(flags: raw.flags, gsoType: raw.gso_type, headerLength: raw.hdr_len, gsoSize: raw.gso_size,
                  checksumStart: raw.csum_start, checksumOffset: raw.csum_offset)
    }

    /// Writes the header's bytes at `address` (unaligned is fine).
    public func store(to address: UnsafeMutableRawPointer) {
        UnsafeMutableRawBufferPointer(start: address, count: Self.size).storeBytes(of: raw, as: virtio_net_hdr.self)
    }

    /// The 10 bytes to write before a frame.
    public var raw: virtio_net_hdr {
        virtio_net_hdr(flags: flags, gso_type: gsoType, hdr_len: headerLength, gso_size: gsoSize,
                       csum_start: checksumStart, csum_offset: checksumOffset)
    }

    /// Builds the header for a frame whose netif flags say its checksum is
    /// blank (`csum_blank`) or validated, with an optional GSO extra. The
    /// checksum position comes from the frame's own headers; nil when the
    /// frame asks for an offload it is not eligible for (not TCP or UDP, or
    /// GSO on a frame that is not TCP of the GSO's IP version).
    public init?(checksumBlank: Bool, dataValidated: Bool, gso: NetExtraInfo?, frame: UnsafeRawBufferPointer) {
        self = .plain
        if dataValidated { flags |= Self.dataValid }
        guard checksumBlank || gso != nil else { return }
        guard let l4 = FrameHeaders(frame) else { return nil }
        flags = Self.needsChecksum
        checksumStart = UInt16(l4.transportOffset)
        checksumOffset = l4.checksumFieldOffset
        if case .gso(let size, let type, _) = gso {
            guard l4.isTCP, (type == .tcpv4) == l4.isIPv4 else { return nil }
            gsoType = UInt8(type == .tcpv4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6)
            gsoSize = size
            headerLength = UInt16(l4.transportOffset + l4.transportHeaderLength)
        }
    }

    /// The netif view of this header: whether the checksum is blank, whether
    /// the data was validated, and the GSO extra for a segmentable frame. Nil
    /// for a GSO type netif cannot carry (UDP fragmentation).
    public var netifOffload: (checksumBlank: Bool, dataValidated: Bool, gso: NetExtraInfo?)? {
        let blank = flags & Self.needsChecksum != 0
        let validated = blank || flags & Self.dataValid != 0
        switch Int32(gsoType & ~UInt8(VIRTIO_NET_HDR_GSO_ECN)) {
        case VIRTIO_NET_HDR_GSO_NONE:
            return (blank, validated, nil)
        case VIRTIO_NET_HDR_GSO_TCPV4:
            return (blank, validated, .gso(size: gsoSize, type: .tcpv4, features: 0))
        case VIRTIO_NET_HDR_GSO_TCPV6:
            return (blank, validated, .gso(size: gsoSize, type: .tcpv6, features: 0))
        default:
            return nil
        }
    }
}

/// Where the transport header of an Ethernet frame starts, found by walking
/// its Ethernet (with one VLAN tag), IPv4 or IPv6 (with extension headers)
/// and TCP or UDP headers. Every length read from the frame is bounded by it.
struct FrameHeaders {
    var transportOffset: Int
    var transportHeaderLength: Int
    var isTCP: Bool
    var isIPv4: Bool

    /// The checksum field's offset inside the transport header.
    var checksumFieldOffset: UInt16 { isTCP ? 16 : 6 }

    init?(_ f: UnsafeRawBufferPointer) {
        func u8(_ i: Int) -> Int? { i < f.count ? Int(f[i]) : nil }
        func u16(_ i: Int) -> Int? { i + 1 < f.count ? Int(f[i]) << 8 | Int(f[i + 1]) : nil }
        var l3 = 14
        guard var etherType = u16(12) else { return nil }
        if etherType == 0x8100 { guard let t = u16(16) else { return nil }; etherType = t; l3 = 18 }
        var proto: Int
        switch etherType {
        case 0x0800:
            guard let vihl = u8(l3), vihl >> 4 == 4, let p = u8(l3 + 9) else { return nil }
            isIPv4 = true
            proto = p
            transportOffset = l3 + (vihl & 0x0f) * 4
        case 0x86DD:
            guard let next = u8(l3 + 6) else { return nil }
            isIPv4 = false
            proto = next
            transportOffset = l3 + 40
            // Hop-by-hop, routing and destination options: skip, a few at most.
            var hops = 0
            while [0, 43, 60].contains(proto) {
                hops += 1
                guard hops <= 4, let nh = u8(transportOffset), let len = u8(transportOffset + 1) else { return nil }
                proto = nh
                transportOffset += (len + 1) * 8
            }
        default:
            return nil
        }
        switch proto {
        case 6:
            guard let off = u8(transportOffset + 12) else { return nil }
            isTCP = true
            transportHeaderLength = (off >> 4) * 4
            guard transportHeaderLength >= 20 else { return nil }
        case 17:
            isTCP = false
            transportHeaderLength = 8
        default:
            return nil
        }
        guard transportOffset + transportHeaderLength <= f.count else { return nil }
    }
}
