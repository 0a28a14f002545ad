import SystemPackage
import XenNetProtocol

/// What the backend advertised it takes from the guest (its `feature-*` keys).
public struct NetBackendFeatures: Hashable, Sendable {
    /// `feature-sg`: frames in several slots.
    public var scatterGather: Bool
    /// `feature-gso-tcpv4/6`: unsegmented TCP frames of these kinds.
    public var segmentation: Set<NetGSOType>
    /// Not `feature-no-csum-offload`: frames with a blank checksum.
    public var checksumOffload: Bool

    /// Features as read from the backend's keys; the default takes checksum offload only.
    public init(scatterGather: Bool = false, segmentation: Set<NetGSOType> = [], checksumOffload: Bool = true) {
        self.scatterGather = scatterGather
        self.segmentation = segmentation
        self.checksumOffload = checksumOffload
    }

    /// Whether a frame with this offload state may go to the backend as it is.
    public func accepts(_ offload: FrameOffload) -> Bool {
        if offload.checksumBlank, !checksumOffload { return false }
        if case .gso(_, let type, _) = offload.gso, !(scatterGather && segmentation.contains(type)) { return false }
        return true
    }
}

/// The guest's side of a netfront: where frames to send come from and where
/// received frames go. Read by one pump thread; with a multi-queue vif several pumps
/// may `deliver` into it at once (each frame whole).
public protocol GuestPort: AnyObject, Sendable {
    /// The ports of a vif with `count` queues, this one first and at most `count`: queue
    /// `i`'s pump transmits what `ports[i]` gives and delivers into `ports[i % ports.count]`;
    /// queues past the end only deliver. A port hands out each flow through one of its
    /// ports, in order (a multi-queue TAP's kernel steers by flow, ``PacketPort`` by
    /// `FlowHash`). Called at each connection, before any pump starts. `[self]` by default.
    func queuePorts(_ count: Int) throws -> [any GuestPort]
    /// Told once the backend is connected, before any frame: a port that can
    /// choose what it produces (a TAP's offloads) offers only what is accepted.
    func backendConnected(_ features: NetBackendFeatures) throws
    /// Readable while a frame waits to be sent.
    var fileDescriptor: FileDescriptor { get }
    /// Takes the next frame to send into `buffer`; nil when none waits.
    func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)?
    /// Hands a received frame to the guest.
    func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws
}

extension GuestPort {
    /// One queue: the port itself.
    public func queuePorts(_ count: Int) throws -> [any GuestPort] { [self] }

    /// Does nothing: a port that cannot choose what it produces ignores the features.
    public func backendConnected(_ features: NetBackendFeatures) throws {}
}
