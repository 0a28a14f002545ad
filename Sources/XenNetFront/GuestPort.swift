import SystemPackage
import XenNetProtocol

/// A frame's checksum and segmentation state as netif carries it.
public struct GuestOffload: Hashable, Sendable {
    public var checksumBlank: Bool
    public var dataValidated: Bool
    public var gso: NetExtraInfo?

    public init(checksumBlank: Bool = false, dataValidated: Bool = false, gso: NetExtraInfo? = nil) {
        self.checksumBlank = checksumBlank
        self.dataValidated = dataValidated
        self.gso = gso
    }
}

/// The guest's side of a netfront: where frames to send come from and where
/// received frames go. Used only by the pump thread.
public protocol GuestPort: AnyObject, Sendable {
    /// Readable while a frame waits to be sent.
    var fileDescriptor: FileDescriptor { get }
    /// Takes the next frame to send into `buffer`; nil when none waits.
    func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: GuestOffload)?
    /// Hands a received frame to the guest.
    func deliver(_ frame: UnsafeRawBufferPointer, offload: GuestOffload) throws
}
