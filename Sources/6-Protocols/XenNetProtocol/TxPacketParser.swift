import CXen
import XenABI

/// One data fragment of a transmitted packet: `size` bytes at `offset` in the
/// frame `ref` grants.
public struct TxFragment: Hashable, Sendable {
    /// The grant of the frame holding the bytes (`gref`).
    public var ref: GrantRef
    /// The bytes' offset in the frame.
    public var offset: UInt16
    /// The bytes in this fragment; for the first, the total less the later fragments.
    public var size: UInt16
}

/// Assembles transmit packets from request slots copied out of the tx ring,
/// backend side, as netif.h lays them out: a first request whose `size` is
/// the whole packet, its extras, then further fragments while `more_data` is set.
///
/// Every consumed slot needs exactly one response, in order: a request slot
/// answers with its `id`, an extra slot with `NETIF_RSP_NULL`. The parser
/// records that sequence in `responses`. Storage is reused from packet to
/// packet, so steady-state parsing does not allocate.
public struct TxPacketParser: Sendable {
    /// A response the backend owes for one consumed slot.
    public enum ResponseSlot: Hashable, Sendable {
        /// A request slot: answer `id` with the packet's status.
        case request(id: UInt16)
        /// An extra slot: answer with `NETIF_RSP_NULL`.
        case extra
    }

    /// The fragments of the packet in order; the first one's size is already
    /// the remainder of the total, as netif.h defines it.
    public private(set) var fragments: [TxFragment] = []
    /// The extras that came with the packet.
    public private(set) var extras: [NetExtraInfo] = []
    /// One entry per consumed slot of the current packet.
    public private(set) var responses: [ResponseSlot] = []
    /// The first request's flags.
    public private(set) var flags: NetTxFlags = []
    /// The packet's total size (the first request's `size`).
    public private(set) var totalSize: Int = 0

    /// The most data slots accepted for one packet.
    public let maxSlots: Int

    private enum Expecting { case first, extra, fragment }
    private var expecting = Expecting.first
    private var laterSizes = 0

    /// A parser that accepts packets of up to `maxSlots` data slots.
    /// - Precondition: `maxSlots` is at least 1.
    public init(maxSlots: Int = Netif.minimumSlotsPerPacket) {
        precondition(maxSlots >= 1)
        self.maxSlots = maxSlots
        fragments.reserveCapacity(maxSlots)
        extras.reserveCapacity(Netif.maxExtras)
        responses.reserveCapacity(maxSlots + Netif.maxExtras)
    }

    /// True while a packet is partly consumed.
    public var isMidPacket: Bool { expecting != .first }

    /// Feeds the next slot. Returns true when the packet is complete; its parts
    /// are then in `fragments`, `extras`, `flags` and `responses` until the next
    /// call. On an error the packet is refused: `responses` lists the slots
    /// consumed so far (answer each with an error), and the next call starts a
    /// new packet.
    public mutating func consume(_ slot: netif_tx_request) throws(NetProtocolError) -> Bool {
        if expecting == .first { reset() }
        do {
            return try step(slot)
        } catch {
            expecting = .first
            throw error
        }
    }

    private mutating func reset() {
        fragments.removeAll(keepingCapacity: true)
        extras.removeAll(keepingCapacity: true)
        responses.removeAll(keepingCapacity: true)
        flags = []
        totalSize = 0
        laterSizes = 0
    }

    private mutating func step(_ slot: netif_tx_request) throws(NetProtocolError) -> Bool {
        switch expecting {
        case .extra:
            responses.append(.extra)
            let raw = NetExtraInfo.raw(from: slot)
            let extra = try NetExtraInfo(validating: raw)
            guard !extras.contains(where: { $0.typeCode == extra.typeCode }) else {
                throw NetProtocolError(.duplicateExtra, "extra-info type \(extra.typeCode) twice")
            }
            extras.append(extra)
            if NetExtraInfo.hasMore(raw) { return false }
            expecting = flags.contains(.moreData) ? .fragment : .first
            return expecting == .first ? try finish() : false

        case .first:
            let slotFlags = NetTxFlags(rawValue: slot.flags)
            responses.append(.request(id: slot.id))
            flags = slotFlags
            totalSize = Int(slot.size)
            guard totalSize >= Netif.minimumPacketSize else {
                throw NetProtocolError(.packetTooSmall, "packet of \(totalSize) bytes")
            }
            // The first fragment's own size is known only at the end; check
            // its offset now and its extent in finish().
            guard Int(slot.offset) < XenPage.size else {
                throw NetProtocolError(.crossesPageBoundary, "offset \(slot.offset)")
            }
            fragments.append(TxFragment(ref: GrantRef(slot.gref), offset: slot.offset, size: 0))
            if slotFlags.contains(.extraInfo) { expecting = .extra; return false }
            if slotFlags.contains(.moreData) { expecting = .fragment; return false }
            return try finish()

        case .fragment:
            responses.append(.request(id: slot.id))
            guard fragments.count < maxSlots else {
                throw NetProtocolError(.tooManySlots, "more than \(maxSlots) slots")
            }
            guard Int(slot.offset) + Int(slot.size) <= XenPage.size else {
                throw NetProtocolError(.crossesPageBoundary, "offset \(slot.offset) + size \(slot.size)")
            }
            laterSizes += Int(slot.size)
            guard laterSizes <= totalSize else {
                throw NetProtocolError(.fragmentsExceedTotal, "fragments add up past \(totalSize) bytes")
            }
            fragments.append(TxFragment(ref: GrantRef(slot.gref), offset: slot.offset, size: slot.size))
            if NetTxFlags(rawValue: slot.flags).contains(.moreData) { return false }
            return try finish()
        }
    }

    private mutating func finish() throws(NetProtocolError) -> Bool {
        expecting = .first
        let firstSize = totalSize - laterSizes
        guard Int(fragments[0].offset) + firstSize <= XenPage.size else {
            throw NetProtocolError(.crossesPageBoundary, "first fragment offset \(fragments[0].offset) + size \(firstSize)")
        }
        fragments[0].size = UInt16(firstSize)
        return true
    }
}
