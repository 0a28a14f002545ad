import CXen
import XenABI

/// One fragment a frontend transmits: `size` bytes at `offset` of the granted
/// frame `ref`, answered under `id`.
public struct TxFragmentRequest: Hashable, Sendable {
    /// The grant of the frame holding the bytes (`gref`).
    public var ref: GrantRef
    /// The bytes' offset in the frame.
    public var offset: UInt16
    /// The bytes in this fragment.
    public var size: UInt16
    /// The id the backend answers this slot under (`netif_tx_response.id`).
    public var id: UInt16

    /// A fragment of `size` bytes at `offset` in `ref`'s frame, answered under `id`.
    public init(ref: GrantRef, offset: UInt16, size: UInt16, id: UInt16) {
        self.ref = ref
        self.offset = offset
        self.size = size
        self.id = id
    }
}

/// Lays a packet out as transmit slots, frontend side (netif.h's "Guest
/// transmit" format): the first request carries the total size, then the
/// extras, then the other fragments chained with `more_data`.
public enum TxPacketEncoder {
    /// Ring slots the packet takes.
    public static func slotCount(fragments: Int, extras: Int) -> Int { fragments + extras }

    /// As `encode(fragments:extras:flags:emit:)` with no extras.
    public static func encode(fragments: UnsafeBufferPointer<TxFragmentRequest>, flags: NetTxFlags = [],
                              emit: (netif_tx_request) -> Void) {
        encode(fragments: fragments, extras: EmptyCollection(), flags: flags, emit: emit)
    }

    /// Calls `emit` once per slot, in ring order. `fragments` must not be empty
    /// and must add up to at most `XEN_NETIF_MAX_TX_SIZE`.
    public static func encode<Extras: Collection<NetExtraInfo>>(
        fragments: UnsafeBufferPointer<TxFragmentRequest>,
        extras: Extras,
        flags: NetTxFlags = [],
        emit: (netif_tx_request) -> Void
    ) {
        precondition(!fragments.isEmpty, "a packet has at least one fragment")
        var total = 0
        for f in fragments { total += Int(f.size) }
        precondition(total <= Netif.maxPacketSize, "packet larger than XEN_NETIF_MAX_TX_SIZE")

        var firstFlags = flags.subtracting([.moreData, .extraInfo])
        if fragments.count > 1 { firstFlags.insert(.moreData) }
        if !extras.isEmpty { firstFlags.insert(.extraInfo) }
        let first = fragments[0]
        emit(netif_tx_request(gref: first.ref.rawValue, offset: first.offset, flags: firstFlags.rawValue,
                              id: first.id, size: UInt16(total)))
        let extraCount = extras.count
        for (i, extra) in extras.enumerated() {
            emit(NetExtraInfo.slot(extra.encoded(more: i + 1 < extraCount), as: netif_tx_request.self))
        }
        for i in fragments.indices.dropFirst() {
            let f = fragments[i]
            let more: NetTxFlags = i + 1 < fragments.count ? .moreData : []
            emit(netif_tx_request(gref: f.ref.rawValue, offset: f.offset, flags: more.rawValue, id: f.id, size: f.size))
        }
    }
}
