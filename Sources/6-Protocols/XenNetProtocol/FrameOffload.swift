/// How a frame's checksum and segmentation stand, in netif's terms: the
/// same meaning on a TAP's virtio-net header and on netif flags and extras.
/// Both drivers speak it: netback with its attachment, netfront with the
/// guest's port.
public struct FrameOffload: Hashable, Sendable {
    /// The transport checksum holds only the pseudo-header sum (`csum_blank`).
    public var checksumBlank: Bool
    /// The data was validated against its checksum (`data_validated`).
    public var dataValidated: Bool
    /// Segment into payloads of this size on the way out (a GSO extra).
    public var gso: NetExtraInfo?

    /// Describes a frame; the default is a plain frame with nothing offloaded.
    public init(checksumBlank: Bool = false, dataValidated: Bool = false, gso: NetExtraInfo? = nil) {
        self.checksumBlank = checksumBlank
        self.dataValidated = dataValidated
        self.gso = gso
    }

    /// A frame with a complete checksum and no segmentation: nothing offloaded.
    public static let none = FrameOffload()
}
