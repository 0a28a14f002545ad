import Atomics
import XenNetProtocol

/// What one vif queue did, readable from any thread (`xenpv top`, tests).
/// The queue thread is the only writer; every access is relaxed, because
/// counters are statistics, never synchronisation.
public final class VifCounters: Sendable {
    public let txPackets = ManagedAtomic<UInt64>(0)
    public let txBytes = ManagedAtomic<UInt64>(0)
    public let rxPackets = ManagedAtomic<UInt64>(0)
    public let rxBytes = ManagedAtomic<UInt64>(0)
    /// Frames for the guest dropped because it had not posted enough buffers.
    public let rxDroppedNoBuffers = ManagedAtomic<UInt64>(0)
    /// Frames the attachment refused (its queue was full) or could not offload.
    public let txDroppedAttachment = ManagedAtomic<UInt64>(0)
    /// Grant copies that failed (a bad grant reference, a revoked grant).
    public let badGrants = ManagedAtomic<UInt64>(0)
    /// Notifications sent to the frontend.
    public let notifies = ManagedAtomic<UInt64>(0)
    /// Times the queue thread slept on its descriptors.
    public let sleeps = ManagedAtomic<UInt64>(0)
    private let refused: [ManagedAtomic<UInt64>]

    public init() {
        refused = NetProtocolError.Code.allCases.map { _ in ManagedAtomic<UInt64>(0) }
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

extension ManagedAtomic where Value == UInt64 {
    @inlinable func bump(_ n: UInt64 = 1) { wrappingIncrement(by: n, ordering: .relaxed) }
    @inlinable public var value: UInt64 { load(ordering: .relaxed) }
}
