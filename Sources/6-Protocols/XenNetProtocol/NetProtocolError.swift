/// Why a packet on a netif ring was refused. The backend drops the packet with
/// an error response and counts the reason; the frontend drops the packet.
public struct NetProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong with the packet, for a caller to switch on and count.
    public enum Code: String, Hashable, Sendable, CaseIterable {
        /// The first request's size is below an Ethernet header.
        case packetTooSmall
        /// A packet larger than `XEN_NETIF_MAX_TX_SIZE` (receive side).
        case packetTooLarge
        /// The later fragments add up to more than the first request's total.
        case fragmentsExceedTotal
        /// `offset + size` runs past the 4 KiB page.
        case crossesPageBoundary
        /// More data slots than the backend accepts (`XEN_NETIF_NR_SLOTS_MIN`).
        case tooManySlots
        /// An extra-info type of 0 or at least `XEN_NETIF_EXTRA_TYPE_MAX`.
        case badExtraType
        /// The same extra-info type twice in one packet.
        case duplicateExtra
        /// A GSO extra with an unknown type or a zero segment size.
        case badGSO
        /// A receive response with a negative status.
        case errorStatus
        /// A receive response flag this side never negotiated.
        case unsupportedFlag
    }

    /// What was wrong with the packet.
    public var code: Code
    /// The offending values, for a log.
    public var message: String

    /// Creates an error with `code` and the offending values in `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// `<code>: <message>`.
    public var description: String { "\(code.rawValue): \(message)" }
}
