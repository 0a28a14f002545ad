import CXen
import XenABI

/// Flags of a transmit request (`NETTXF_*` in `io/netif.h`). Their bit order
/// differs from the receive flags: never convert one set to the other by value.
@frozen
public struct NetTxFlags: OptionSet, Hashable, Sendable {
    /// The `flags` field of a `netif_tx_request`.
    public var rawValue: UInt16
    /// Flags from a `flags` field as it stands; unknown bits are kept.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NETTXF_csum_blank`: the protocol checksum is not filled in (offload).
    public static let checksumBlank = NetTxFlags(rawValue: UInt16(NETTXF_csum_blank))
    /// `NETTXF_data_validated`: the data was checked against its checksum.
    public static let dataValidated = NetTxFlags(rawValue: UInt16(NETTXF_data_validated))
    /// `NETTXF_more_data`: the packet continues in the next request.
    public static let moreData = NetTxFlags(rawValue: UInt16(NETTXF_more_data))
    /// `NETTXF_extra_info`: extra-info slots follow this request.
    public static let extraInfo = NetTxFlags(rawValue: UInt16(NETTXF_extra_info))
}

/// Flags of a receive response (`NETRXF_*` in `io/netif.h`).
@frozen
public struct NetRxFlags: OptionSet, Hashable, Sendable {
    /// The `flags` field of a `netif_rx_response`.
    public var rawValue: UInt16
    /// Flags from a `flags` field as it stands; unknown bits are kept.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NETRXF_data_validated`: the backend validated the data against its checksum.
    public static let dataValidated = NetRxFlags(rawValue: UInt16(NETRXF_data_validated))
    /// `NETRXF_csum_blank`: the protocol checksum holds only the pseudo-header sum.
    public static let checksumBlank = NetRxFlags(rawValue: UInt16(NETRXF_csum_blank))
    /// `NETRXF_more_data`: the packet continues in the next response.
    public static let moreData = NetRxFlags(rawValue: UInt16(NETRXF_more_data))
    /// `NETRXF_extra_info`: extra-info slots follow this response.
    public static let extraInfo = NetRxFlags(rawValue: UInt16(NETRXF_extra_info))
    /// `NETRXF_gso_prefix` (deprecated; never produced here, refused on input).
    public static let gsoPrefix = NetRxFlags(rawValue: UInt16(NETRXF_gso_prefix))
}

/// A response status (`NETIF_RSP_*`). On the receive ring a non-negative
/// status is instead the fragment's size in bytes.
@frozen
public struct NetifStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `status` field of a `netif_tx_response` or `netif_rx_response`.
    public var rawValue: Int16
    /// A status as the field holds it.
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }
    /// `NETIF_RSP_DROPPED` (-2): the backend dropped the packet.
    public static let dropped = NetifStatus(rawValue: Int16(NETIF_RSP_DROPPED))
    /// `NETIF_RSP_ERROR` (-1): the request was refused.
    public static let error = NetifStatus(rawValue: Int16(NETIF_RSP_ERROR))
    /// `NETIF_RSP_OKAY` (0): the packet was sent.
    public static let okay = NetifStatus(rawValue: Int16(NETIF_RSP_OKAY))
    /// `NETIF_RSP_NULL`: the answer to an extra-info slot.
    public static let null = NetifStatus(rawValue: Int16(NETIF_RSP_NULL))
    /// "dropped", "error", "okay", "null", or "status N" for any other value.
    public var description: String {
        switch self {
        case .dropped: "dropped"
        case .error: "error"
        case .okay: "okay"
        case .null: "null"
        default: "status \(rawValue)"
        }
    }
}

/// Wire limits of the netif protocol.
public enum Netif {
    /// `XEN_NETIF_MAX_TX_SIZE`: the largest packet a transmit request can describe.
    public static let maxPacketSize = Int(XEN_NETIF_MAX_TX_SIZE)
    /// `XEN_NETIF_NR_SLOTS_MIN`: every backend must accept packets of this many
    /// data slots; more are refused.
    public static let minimumSlotsPerPacket = Int(XEN_NETIF_NR_SLOTS_MIN)
    /// An Ethernet header: no packet can be shorter (Linux netback's rule too).
    public static let minimumPacketSize = 14
    /// At most one extra of each type follows a request.
    public static let maxExtras = Int(XEN_NETIF_EXTRA_TYPE_MAX) - 1
}

/// An Ethernet MAC address, as the `mac` xenstore key writes it (`00:16:3e:12:34:56`).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// The six bytes in transmission order, as `struct netif_extra_info`'s `mcast.addr` holds them.
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    /// An address from its six bytes in transmission order.
    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        bytes = (b0, b1, b2, b3, b4, b5)
    }

    /// Parses six colon-separated hex pairs; nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var values = [UInt8]()
        for part in parts {
            // Two hex digits exactly: UInt8(_:radix:) alone would take "+f" or "-0".
            guard part.count == 2, part.allSatisfy(\.isHexDigit), let v = UInt8(part, radix: 16) else { return nil }
            values.append(v)
        }
        self.init(values[0], values[1], values[2], values[3], values[4], values[5])
    }

    /// The six bytes as an array.
    public var array: [UInt8] { [bytes.0, bytes.1, bytes.2, bytes.3, bytes.4, bytes.5] }

    /// Six lowercase hex pairs separated by colons.
    public var description: String {
        array.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    /// Equal when all six bytes are.
    public static func == (a: Self, b: Self) -> Bool { a.array == b.array }
    /// Hashes the six bytes.
    public func hash(into h: inout Hasher) { h.combine(array) }
}
