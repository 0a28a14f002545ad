import CXen
import XenABI

/// One fragment of a received packet: `size` bytes at `offset` in the buffer
/// posted in ring slot `slot`.
public struct RxFragment: Hashable, Sendable {
    /// The ring index of the request whose buffer holds the bytes (the response's slot).
    public var slot: RingIndex
    /// The bytes' offset in that buffer's page.
    public var offset: UInt16
    /// The bytes in this fragment (the response's non-negative `status`).
    public var size: UInt16
}

/// Reassembles received packets from response slots copied out of the rx
/// ring, frontend side. The backend is not trusted: sizes, offsets, flags and
/// chain lengths are checked. Storage is reused between packets.
public struct RxPacketParser: Sendable {
    /// The data fragments of the current packet in order.
    public private(set) var fragments: [RxFragment] = []
    /// The extras that came with the current packet.
    public private(set) var extras: [NetExtraInfo] = []
    /// The first response's flags.
    public private(set) var flags: NetRxFlags = []
    /// Bytes in the packet (the sum of fragment sizes).
    public private(set) var totalSize = 0
    /// Every ring slot the current packet consumed, extras included, so the
    /// frontend can take back each posted buffer.
    public private(set) var slots: [RingIndex] = []

    /// The most data slots accepted for one packet; more is ``NetProtocolError/Code/tooManySlots``.
    public let maxDataSlots: Int
    private enum Expecting { case first, extra, fragment }
    private var expecting = Expecting.first

    /// A parser that accepts packets of up to `maxDataSlots` data slots.
    public init(maxDataSlots: Int = Netif.minimumSlotsPerPacket) {
        self.maxDataSlots = maxDataSlots
        fragments.reserveCapacity(maxDataSlots)
        extras.reserveCapacity(Netif.maxExtras)
        slots.reserveCapacity(maxDataSlots + Netif.maxExtras)
    }

    /// True while a packet is partly consumed.
    public var isMidPacket: Bool { expecting != .first }

    /// Feeds the response copied from ring slot `index`. Returns true when a
    /// packet is complete. On an error the packet is dropped (`slots` lists
    /// what it consumed) and the next call starts a new one.
    public mutating func consume(_ rsp: netif_rx_response, at index: RingIndex) throws(NetProtocolError) -> Bool {
        if expecting == .first {
            fragments.removeAll(keepingCapacity: true)
            extras.removeAll(keepingCapacity: true)
            slots.removeAll(keepingCapacity: true)
            flags = []
            totalSize = 0
        }
        slots.append(index)
        do {
            return try step(rsp, at: index)
        } catch {
            expecting = .first
            throw error
        }
    }

    private mutating func step(_ rsp: netif_rx_response, at index: RingIndex) throws(NetProtocolError) -> Bool {
        if expecting == .extra {
            let raw = NetExtraInfo.raw(from: rsp)
            let extra = try NetExtraInfo(validating: raw)
            guard !extras.contains(where: { $0.typeCode == extra.typeCode }) else {
                throw NetProtocolError(.duplicateExtra, "extra-info type \(extra.typeCode) twice")
            }
            extras.append(extra)
            if !NetExtraInfo.hasMore(raw) { expecting = flags.contains(.moreData) ? .fragment : .first }
            return expecting == .first
        }
        let slotFlags = NetRxFlags(rawValue: rsp.flags)
        guard rsp.status >= 0 else {
            throw NetProtocolError(.errorStatus, "status \(NetifStatus(rawValue: rsp.status))")
        }
        guard !slotFlags.contains(.gsoPrefix) else {
            throw NetProtocolError(.unsupportedFlag, "NETRXF_gso_prefix")
        }
        guard Int(rsp.offset) + Int(rsp.status) <= XenPage.size else {
            throw NetProtocolError(.crossesPageBoundary, "offset \(rsp.offset) + size \(rsp.status)")
        }
        guard fragments.count < maxDataSlots else {
            throw NetProtocolError(.tooManySlots, "more than \(maxDataSlots) slots")
        }
        fragments.append(RxFragment(slot: index, offset: rsp.offset, size: UInt16(rsp.status)))
        totalSize += Int(rsp.status)
        if expecting == .first {
            flags = slotFlags
            if slotFlags.contains(.extraInfo) { expecting = .extra; return false }
        }
        expecting = slotFlags.contains(.moreData) ? .fragment : .first
        return expecting == .first
    }
}
