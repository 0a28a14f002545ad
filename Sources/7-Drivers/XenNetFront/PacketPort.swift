import CXen
import DequeModule
import Glibc
import SystemPackage
import XenLocks
import XenNetProtocol

/// The `async` packet API of a netfront: `send` returns once the frame is
/// queued for the ring, and suspends while `sendLimit` frames already wait
/// (back-pressure, nothing dropped); received frames arrive on `packets`,
/// which holds at most `receiveLimit` unread frames and counts what it had
/// to drop beyond that.
public final class PacketPort: GuestPort {
    /// A received frame.
    public struct Packet: Sendable {
        /// The Ethernet frame.
        public var bytes: [UInt8]
        /// Its checksum and segmentation state, as the backend gave it.
        public var offload: FrameOffload
    }

    private struct Outbound {
        var bytes: [UInt8]
        var offload: FrameOffload
        /// Set when the sender waits for room: resumed once this frame leaves the queue.
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let outbound = Locked(Deque<Outbound>())
    private let wakeFD = cxen_eventfd(0, 1)
    /// Received frames in arrival order; holds at most `receiveLimit` unread ones and drops
    /// newer frames beyond that (counted in ``droppedUnread``).
    public let packets: AsyncStream<Packet>
    private let inbound: AsyncStream<Packet>.Continuation
    private let dropped = Locked<UInt64>(0)

    private let sendLimit: Int

    /// A port on which at most `sendLimit` frames wait for the ring before ``send(_:offload:)``
    /// suspends, and at most `receiveLimit` received frames wait to be read.
    public init(sendLimit: Int = 256, receiveLimit: Int = 4096) {
        self.sendLimit = sendLimit
        (packets, inbound) = AsyncStream.makeStream(of: Packet.self, bufferingPolicy: .bufferingOldest(receiveLimit))
    }

    deinit {
        inbound.finish()
        close(wakeFD)
    }

    /// Received frames dropped because `packets` was not read fast enough.
    public var droppedUnread: UInt64 { dropped.withLock { $0 } }

    /// Queues a frame for the pump and returns; while `sendLimit` frames already wait, it
    /// suspends until the pump has taken this one.
    /// - Throws: ``NetFrontError`` `.badFrameSize` for a frame shorter than an Ethernet
    ///   header or longer than `XEN_NETIF_MAX_TX_SIZE`.
    public func send(_ bytes: [UInt8], offload: FrameOffload = FrameOffload()) async throws(NetFrontError) {
        guard bytes.count >= Netif.minimumPacketSize, bytes.count <= Netif.maxPacketSize else {
            throw NetFrontError(.badFrameSize, "frame of \(bytes.count) bytes")
        }
        let queued = outbound.withLock { q -> Bool in
            guard q.count < sendLimit else { return false }
            q.append(Outbound(bytes: bytes, offload: offload, continuation: nil))
            return true
        }
        if queued {
            wakePump()
            return
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            outbound.withLock { $0.append(Outbound(bytes: bytes, offload: offload, continuation: c)) }
            wakePump()
        }
    }

    private func wakePump() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// An eventfd, readable while frames wait to be sent.
    public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: wakeFD) }

    /// Takes the oldest waiting frame into `buffer`, resuming its sender if it waited; nil
    /// when none waits. Called by the pump thread.
    public func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        guard let next = outbound.withLock({ $0.popFirst() }) else {
            var count: UInt64 = 0
            _ = read(wakeFD, &count, 8)
            // A send that raced the read above must keep the descriptor readable.
            if outbound.withLock({ !$0.isEmpty }) { var one: UInt64 = 1; _ = write(wakeFD, &one, 8) }
            return nil
        }
        // `send` admitted only frames up to XEN_NETIF_MAX_TX_SIZE, which fit.
        next.bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        next.continuation?.resume()
        return (0 ..< next.bytes.count, next.offload)
    }

    /// Yields a received frame to ``packets``, or counts it in ``droppedUnread`` when
    /// `receiveLimit` frames are unread already. Called by the pump thread.
    public func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws {
        if case .dropped = inbound.yield(Packet(bytes: Array(frame), offload: offload)) {
            dropped.withLock { $0 += 1 }
        }
    }
}
