import XenNetBack

/// A NIC that answers every frame with itself, source and destination MAC
/// swapped: the demo's "network", so the guest can check every reply.
enum EchoAttachment {
    static func make() -> MemoryAttachment {
        let box = Box()
        let attachment = MemoryAttachment(limit: 4096) { frame, offload in
            var reply = Array(frame)
            if reply.count >= 12 {
                for i in 0 ..< 6 { reply.swapAt(i, 6 + i) }
            }
            return box.attachment?.inject(reply, offload: offload) ?? false
        }
        box.attachment = attachment
        return attachment
    }

    /// Breaks the cycle between the attachment and its own callback.
    private final class Box: @unchecked Sendable {
        weak var attachment: MemoryAttachment?
    }
}
