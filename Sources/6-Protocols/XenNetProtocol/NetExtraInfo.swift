import CXen

/// The GSO type of a packet (`XEN_NETIF_GSO_TYPE_*`).
public enum NetGSOType: UInt8, Sendable {
    /// `XEN_NETIF_GSO_TYPE_TCPV4`: TCP over IPv4 (`feature-gso-tcpv4`).
    case tcpv4 = 1
    /// `XEN_NETIF_GSO_TYPE_TCPV6`: TCP over IPv6 (`feature-gso-tcpv6`).
    case tcpv6 = 2
}

/// An extra-info slot (`netif_extra_info`), which overlays a request or
/// response slot after one flagged `extra_info`.
public enum NetExtraInfo: Hashable, Sendable {
    /// `XEN_NETIF_EXTRA_TYPE_GSO`: segment the packet into `size`-byte payloads.
    case gso(size: UInt16, type: NetGSOType, features: UInt16)
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: add this address to the vif's multicast filter.
    case multicastAdd(MACAddress)
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`: remove this address from the vif's multicast filter.
    case multicastDelete(MACAddress)
    /// `XEN_NETIF_EXTRA_TYPE_HASH`: the packet's hash (`_XEN_NETIF_CTRL_HASH_TYPE_*` bit
    /// number, `XEN_NETIF_CTRL_HASH_ALGORITHM_*`, and the value, stored LSB first).
    case hash(type: UInt8, algorithm: UInt8, value: UInt32)

    /// The `XEN_NETIF_EXTRA_TYPE_*` value.
    public var typeCode: UInt8 {
        switch self {
        case .gso: UInt8(XEN_NETIF_EXTRA_TYPE_GSO)
        case .multicastAdd: UInt8(XEN_NETIF_EXTRA_TYPE_MCAST_ADD)
        case .multicastDelete: UInt8(XEN_NETIF_EXTRA_TYPE_MCAST_DEL)
        case .hash: UInt8(XEN_NETIF_EXTRA_TYPE_HASH)
        }
    }

    /// Decodes and validates a slot copied out of the ring; whether another extra
    /// follows (`XEN_NETIF_EXTRA_FLAG_MORE`) is ``hasMore(_:)``'s to say.
    /// - Throws: ``NetProtocolError`` `.badGSO` for a GSO extra with an unknown type or a
    ///   zero size, `.badExtraType` for a type this side does not know.
    public init(validating raw: netif_extra_info) throws(NetProtocolError) {
        switch UInt32(raw.type) {
        case UInt32(XEN_NETIF_EXTRA_TYPE_GSO):
            let gso = raw.u.gso
            guard let type = NetGSOType(rawValue: gso.type), gso.size > 0 else {
                throw NetProtocolError(.badGSO, "GSO type \(gso.type) size \(gso.size)")
            }
            self = .gso(size: gso.size, type: type, features: gso.features)
        case UInt32(XEN_NETIF_EXTRA_TYPE_MCAST_ADD), UInt32(XEN_NETIF_EXTRA_TYPE_MCAST_DEL):
            let a = raw.u.mcast.addr
            let mac = MACAddress(a.0, a.1, a.2, a.3, a.4, a.5)
            self = UInt32(raw.type) == UInt32(XEN_NETIF_EXTRA_TYPE_MCAST_ADD) ? .multicastAdd(mac) : .multicastDelete(mac)
        case UInt32(XEN_NETIF_EXTRA_TYPE_HASH):
            let h = raw.u.hash
            // value[] is stored LSB first (netif.h's diagram).
            let v = UInt32(h.value.0) | UInt32(h.value.1) << 8 | UInt32(h.value.2) << 16 | UInt32(h.value.3) << 24
            self = .hash(type: h.type, algorithm: h.algorithm, value: v)
        default:
            throw NetProtocolError(.badExtraType, "extra-info type \(raw.type)")
        }
    }

    /// Whether a raw extra slot says another extra follows it.
    @inlinable public static func hasMore(_ raw: netif_extra_info) -> Bool {
        UInt32(raw.flags) & UInt32(XEN_NETIF_EXTRA_FLAG_MORE) != 0
    }

    /// The slot encoding, every unused byte zero.
    public func encoded(more: Bool) -> netif_extra_info {
        var raw = netif_extra_info()
        raw.type = typeCode
        raw.flags = more ? UInt8(XEN_NETIF_EXTRA_FLAG_MORE) : 0
        switch self {
        case .gso(let size, let type, let features):
            raw.u.gso.size = size
            raw.u.gso.type = type.rawValue
            raw.u.gso.features = features
        case .multicastAdd(let mac), .multicastDelete(let mac):
            raw.u.mcast.addr = mac.bytes
        case .hash(let type, let algorithm, let value):
            raw.u.hash.type = type
            raw.u.hash.algorithm = algorithm
            raw.u.hash.value = (UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8),
                                UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 24))
        }
        return raw
    }
}

extension NetExtraInfo {
    /// Reads a ring slot that holds an extra instead of a request or response.
    /// The slot was already copied out of shared memory; this reinterprets the copy.
    @inlinable public static func raw<Slot: BitwiseCopyable>(from slot: Slot) -> netif_extra_info {
        precondition(MemoryLayout<Slot>.size >= MemoryLayout<netif_extra_info>.size)
        return withUnsafeBytes(of: slot) { $0.loadUnaligned(as: netif_extra_info.self) }
    }

    /// Writes an extra over a slot value, keeping the slot's other bytes zero.
    @inlinable public static func slot<Slot: BitwiseCopyable>(_ raw: netif_extra_info, as _: Slot.Type) -> Slot {
        precondition(MemoryLayout<Slot>.size >= MemoryLayout<netif_extra_info>.size)
        var slot = zeroed(Slot.self)
        withUnsafeMutableBytes(of: &slot) { $0.storeBytes(of: raw, as: netif_extra_info.self) }
        return slot
    }

    @inlinable static func zeroed<T: BitwiseCopyable>(_: T.Type) -> T {
        // SAFETY: the netif slot types are C structs of integers, for which
        // all-zero bytes are a valid value.
        withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { buffer in
            UnsafeMutableRawBufferPointer(buffer).initializeMemory(as: UInt8.self, repeating: 0)
            return buffer[0]
        }
    }
}
