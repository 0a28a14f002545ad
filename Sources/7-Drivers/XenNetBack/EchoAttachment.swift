import Foundation

/// A NIC that answers every frame with itself (by default with source and
/// destination MAC swapped, as a peer replying would), carrying its offload
/// state back: a network for demos, examples and tests, where the guest can
/// check every reply byte for byte.
public enum EchoAttachment {
    /// An echoing attachment that holds at most `limit` replies for the guest; with
    /// `swapAddresses` each reply's source and destination MAC are swapped; `queues` receive
    /// queues, each reply on the queue of its flow (see ``MemoryAttachment``).
    public static func make(swapAddresses: Bool = true, limit: Int = 4096, queues: Int = 1) -> MemoryAttachment {
        let slot = Slot()
        let attachment = MemoryAttachment(limit: limit, queues: queues) { frame, offload in
            var reply = Array(frame)
            if swapAddresses, reply.count >= 12 {
                for i in 0 ..< 6 { reply.swapAt(i, 6 + i) }
            }
            return slot.attachment?.inject(reply, offload: offload) ?? false
        }
        slot.attachment = attachment
        return attachment
    }

    /// Breaks the cycle between the attachment and its own callback.
    private final class Slot: @unchecked Sendable {
        // @unchecked: set once before any frame flows, read after.
        weak var attachment: MemoryAttachment?
    }
}
