import CXen
import XenABI

/// How a backend lays one received packet over the buffers a frontend posted
/// on the rx ring (netif.h's "Guest receive" format).
///
/// Each response goes in the ring slot of the request it consumes, as Linux
/// netfront relies on; an extra consumes a request too and returns its buffer
/// unused. Data fills whole pages from offset 0.
public struct RxPacketLayout: Hashable, Sendable {
    /// The role of one ring slot of the packet.
    public enum Slot: Hashable, Sendable {
        /// Bytes `range` of the packet go into this slot's buffer at offset 0.
        case data(range: Range<Int>)
        /// This slot carries extra number `index`.
        case extra(index: Int)
    }

    /// Bytes in the packet.
    public let length: Int
    /// Extra-info slots that follow the first data slot.
    public let extraCount: Int

    /// A layout for `length` bytes with `extraCount` extras; nil for an empty
    /// packet or one longer than `maxDataSlots` pages.
    public init?(length: Int, extraCount: Int = 0, maxDataSlots: Int = Netif.minimumSlotsPerPacket) {
        guard length > 0, (length + XenPage.size - 1) / XenPage.size <= maxDataSlots,
              extraCount >= 0, extraCount <= Netif.maxExtras else { return nil }
        self.length = length
        self.extraCount = extraCount
    }

    /// Data slots: one per started page.
    public var dataSlots: Int { (length + XenPage.size - 1) / XenPage.size }
    /// Ring slots (and posted requests) the packet consumes.
    public var slotCount: Int { dataSlots + extraCount }

    /// What slot `k` of the packet holds: data 0, then the extras, then data 1…
    public func slot(_ k: Int) -> Slot {
        precondition(k >= 0 && k < slotCount, "slot out of range")
        let data: Int
        if k == 0 { data = 0 } else if k <= extraCount { return .extra(index: k - 1) } else { data = k - extraCount }
        let start = data * XenPage.size
        return .data(range: start ..< min(length, start + XenPage.size))
    }

    /// The response for data slot `k`, answering request `id`. `flags` may
    /// carry checksum flags; the chaining flags are set here.
    public func response(slot k: Int, id: UInt16, flags: NetRxFlags = []) -> netif_rx_response {
        guard case .data(let range) = slot(k) else { preconditionFailure("slot \(k) is an extra") }
        var f = k == 0 ? flags.intersection([.dataValidated, .checksumBlank]) : []
        if k == 0, extraCount > 0 { f.insert(.extraInfo) }
        if range.upperBound < length { f.insert(.moreData) }
        return netif_rx_response(id: id, offset: 0, flags: f.rawValue, status: Int16(range.count))
    }

    /// The response-slot encoding of extra `index` among `extras`.
    public static func extraResponse(_ extras: [NetExtraInfo], index: Int) -> netif_rx_response {
        NetExtraInfo.slot(extras[index].encoded(more: index + 1 < extras.count), as: netif_rx_response.self)
    }
}
