/// Which queue of a multi-queue vif a frame belongs to: a hash of its flow (IPv4 or IPv6
/// addresses, and TCP or UDP ports when the frame carries them), so every frame of one
/// flow takes the same queue and stays in order, while different flows spread.
///
/// The hash is symmetric: a flow and its reverse (the replies) hash alike, as Linux's
/// `__skb_get_hash_symmetric` makes them, so both directions of a connection meet the
/// same queue. A frame that is not IP (ARP, a runt) hashes to 0; IP fragments hash by
/// their addresses only, since only the first fragment carries the ports. Pure: the
/// frame is peer data, read with explicit bounds, and nothing here can trap.
public enum FlowHash {
    /// The flow hash of an Ethernet frame (optionally 802.1Q-tagged); 0 when it is not IP.
    /// Does not allocate.
    public static func of(_ frame: UnsafeRawBufferPointer) -> UInt32 {
        var offset = 12
        guard var type = u16(frame, offset) else { return 0 }
        if type == 0x8100 || type == 0x88a8 {
            offset += 4
            guard let inner = u16(frame, offset) else { return 0 }
            type = inner
        }
        offset += 2
        var h: UInt32 = 0x811c_9dc5
        let proto: UInt8
        var transport: Int?
        switch type {
        case 0x0800:
            guard let vihl = u8(frame, offset), vihl >> 4 == 4 else { return 0 }
            let headerLength = Int(vihl & 0x0f) * 4
            guard headerLength >= 20, let p = u8(frame, offset + 9), let fragment = u16(frame, offset + 6),
                  within(frame, offset + 12, 8) else { return 0 }
            proto = p
            mixOrdered(&h, frame, offset + 12, offset + 16, 4)
            // More fragments or a fragment offset: no ports in this one.
            if fragment & 0x3fff == 0 { transport = offset + headerLength }
        case 0x86dd:
            guard let v = u8(frame, offset), v >> 4 == 6, let p = u8(frame, offset + 6),
                  within(frame, offset + 8, 32) else { return 0 }
            proto = p
            mixOrdered(&h, frame, offset + 8, offset + 24, 16)
            // Extension headers are not walked: such a flow hashes by its addresses.
            transport = offset + 40
        default:
            return 0
        }
        mix(&h, proto)
        if proto == 6 || proto == 17, let t = transport, within(frame, t, 4) {
            mixOrdered(&h, frame, t, t + 2, 2)
        }
        // Fold the high bits down: `% count` of a small count would see only the low ones.
        return h ^ (h >> 16)
    }

    /// The queue of `frame` among `count` queues (0 when `count` is at most 1).
    public static func queue(of frame: UnsafeRawBufferPointer, among count: Int) -> Int {
        guard count > 1 else { return 0 }
        return Int(of(frame) % UInt32(truncatingIfNeeded: count))
    }

    /// Mixes the endpoints at `a` and `b` (`count` bytes each, in bounds) in a fixed
    /// order, so a flow and its reverse mix alike.
    private static func mixOrdered(_ h: inout UInt32, _ frame: UnsafeRawBufferPointer, _ a: Int, _ b: Int, _ count: Int) {
        var aFirst = true
        for i in 0 ..< count where frame[a + i] != frame[b + i] {
            aFirst = frame[a + i] < frame[b + i]
            break
        }
        let (first, second) = aFirst ? (a, b) : (b, a)
        for i in 0 ..< count { mix(&h, frame[first + i]) }
        for i in 0 ..< count { mix(&h, frame[second + i]) }
    }

    /// One FNV-1a step.
    private static func mix(_ h: inout UInt32, _ byte: UInt8) { h = (h ^ UInt32(byte)) &* 0x0100_0193 }

    private static func within(_ frame: UnsafeRawBufferPointer, _ at: Int, _ count: Int) -> Bool {
        at >= 0 && count >= 0 && at <= frame.count - count
    }

    private static func u8(_ frame: UnsafeRawBufferPointer, _ at: Int) -> UInt8? {
        at >= 0 && at < frame.count ? frame[at] : nil
    }

    private static func u16(_ frame: UnsafeRawBufferPointer, _ at: Int) -> UInt16? {
        guard at >= 0, at + 2 <= frame.count else { return nil }
        return UInt16(frame[at]) << 8 | UInt16(frame[at + 1])
    }
}
