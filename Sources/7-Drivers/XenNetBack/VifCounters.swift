import XenDriverRuntime
import XenNetProtocol

/// What one vif queue did, readable from any thread (`xenpv top`, tests).
/// The queue thread is the only writer; every access is relaxed, because
/// counters are statistics, never synchronisation.
public final class VifCounters: Sendable {
    /// Packets the guest transmitted that reached the attachment.
    public let txPackets = DriverCounter(0)
    /// Bytes of those packets.
    public let txBytes = DriverCounter(0)
    /// Frames copied into the guest's receive buffers.
    public let rxPackets = DriverCounter(0)
    /// Bytes of those frames.
    public let rxBytes = DriverCounter(0)
    /// Frames for the guest dropped because it had not posted enough buffers.
    public let rxDroppedNoBuffers = DriverCounter(0)
    /// Frames the attachment refused (its queue was full) or could not offload.
    public let txDroppedAttachment = DriverCounter(0)
    /// Grant copies that failed (a bad grant reference, a revoked grant).
    public let badGrants = DriverCounter(0)
    /// Notifications sent to the frontend.
    public let notifies = DriverCounter(0)
    /// Times the queue thread slept on its descriptors.
    public let sleeps = DriverCounter(0)
    private let refused: [DriverCounter]

    /// Counters all at zero.
    public init() {
        refused = NetProtocolError.Code.allCases.map { _ in DriverCounter(0) }
    }

    /// Packets refused for `reason`, transmit and receive alike.
    public func refused(_ reason: NetProtocolError.Code) -> UInt64 {
        refused[NetProtocolError.Code.allCases.firstIndex(of: reason)!].load(ordering: .relaxed)
    }

    func countRefused(_ reason: NetProtocolError.Code) {
        refused[NetProtocolError.Code.allCases.firstIndex(of: reason)!].bump()
    }

    /// Every non-zero refusal count with its reason, for display.
    public var refusals: [(NetProtocolError.Code, UInt64)] {
        NetProtocolError.Code.allCases.map { ($0, refused($0)) }.filter { $0.1 > 0 }
    }
}
