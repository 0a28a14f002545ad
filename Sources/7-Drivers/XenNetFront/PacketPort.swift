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
///
/// With `queues` > 1 the port feeds up to that many queues of a multi-queue vif: each
/// frame waits on the queue its flow hashes to (`FlowHash`), so one flow stays on one
/// queue, in order; received frames from every queue arrive on the one `packets`.
public final class PacketPort: GuestPort {
    /// A received frame.
    public struct Packet: Sendable {
        /// The Ethernet frame.
        public var bytes: [UInt8]
        /// Its checksum and segmentation state, as the backend gave it.
        public var offload: FrameOffload
    }

    private let lanes: [OutboundLane]
    /// How many lanes the current connection reads (set by ``queuePorts(_:)``).
    private let active = Locked(1)
    /// Received frames in arrival order; holds at most `receiveLimit` unread ones and drops
    /// newer frames beyond that (counted in ``droppedUnread``).
    public let packets: AsyncStream<Packet>
    private let inbound: AsyncStream<Packet>.Continuation
    private let dropped = Locked<UInt64>(0)

    /// A port on which at most `sendLimit` frames wait for each queue's ring before
    /// ``send(_:offload:)`` suspends, and at most `receiveLimit` received frames wait to be
    /// read; it feeds up to `queues` vif queues.
    public init(sendLimit: Int = 256, receiveLimit: Int = 4096, queues: Int = 1) {
        lanes = (0 ..< max(1, queues)).map { _ in OutboundLane(limit: sendLimit) }
        (packets, inbound) = AsyncStream.makeStream(of: Packet.self, bufferingPolicy: .bufferingOldest(receiveLimit))
    }

    deinit {
        inbound.finish()
    }

    /// Received frames dropped because `packets` was not read fast enough.
    public var droppedUnread: UInt64 { dropped.withLock { $0 } }

    /// Queues a frame for the pump of its flow's queue and returns; while `sendLimit`
    /// frames already wait there, it suspends until the pump has taken this one.
    /// - Throws: ``NetFrontError`` `.badFrameSize` for a frame shorter than an Ethernet
    ///   header or longer than `XEN_NETIF_MAX_TX_SIZE`.
    public func send(_ bytes: [UInt8], offload: FrameOffload = FrameOffload()) async throws(NetFrontError) {
        guard bytes.count >= Netif.minimumPacketSize, bytes.count <= Netif.maxPacketSize else {
            throw NetFrontError(.badFrameSize, "frame of \(bytes.count) bytes")
        }
        let lane = active.withLock { n in bytes.withUnsafeBytes { FlowHash.queue(of: $0, among: n) } }
        await lanes[lane].send(bytes, offload: offload)
    }

    /// Ports for `count` queues (at most the `queues` this port was made with), this one
    /// first. Frames still waiting on a queue the new connection does not read move to
    /// the first, in their order.
    public func queuePorts(_ count: Int) throws -> [any GuestPort] {
        let n = max(1, min(count, lanes.count))
        active.withLock { $0 = n }
        for lane in lanes.dropFirst(n) { lanes[0].takeAll(from: lane) }
        return [self] + lanes[1 ..< n].map { PacketQueuePort(lane: $0, owner: self) as any GuestPort }
    }

    /// An eventfd, readable while frames wait to be sent on the first queue.
    public var fileDescriptor: FileDescriptor { lanes[0].fileDescriptor }

    /// Takes the oldest frame waiting on the first queue into `buffer`, resuming its sender
    /// if it waited; nil when none waits. Called by the pump thread.
    public func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        lanes[0].next(into: buffer)
    }

    /// Yields a received frame to ``packets``, or counts it in ``droppedUnread`` when
    /// `receiveLimit` frames are unread already. Called by the pump threads.
    public func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws {
        if case .dropped = inbound.yield(Packet(bytes: Array(frame), offload: offload)) {
            dropped.withLock { $0 += 1 }
        }
    }
}

/// A further queue of a ``PacketPort``: its own frames to send, deliveries into the port.
final class PacketQueuePort: GuestPort {
    let lane: OutboundLane
    let owner: PacketPort
    init(lane: OutboundLane, owner: PacketPort) {
        self.lane = lane
        self.owner = owner
    }

    var fileDescriptor: FileDescriptor { lane.fileDescriptor }
    func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        lane.next(into: buffer)
    }
    func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws { try owner.deliver(frame, offload: offload) }
}

/// Frames waiting for one queue's pump, and an eventfd readable while any does.
final class OutboundLane: Sendable {
    private struct Outbound {
        var bytes: [UInt8]
        var offload: FrameOffload
        /// Set when the sender waits for room: resumed once this frame leaves the queue.
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let outbound = Locked(Deque<Outbound>())
    private let wakeFD = cxen_eventfd(0, 1)
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    deinit { close(wakeFD) }

    var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: wakeFD) }

    func send(_ bytes: [UInt8], offload: FrameOffload) async {
        let queued = outbound.withLock { q -> Bool in
            guard q.count < limit else { return false }
            q.append(Outbound(bytes: bytes, offload: offload, continuation: nil))
            return true
        }
        if queued {
            wake()
            return
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            outbound.withLock { $0.append(Outbound(bytes: bytes, offload: offload, continuation: c)) }
            wake()
        }
    }

    /// Moves every frame of `other` behind this lane's, keeping their order.
    func takeAll(from other: OutboundLane) {
        let moved = other.outbound.withLock { q in defer { q.removeAll() }; return Array(q) }
        guard !moved.isEmpty else { return }
        outbound.withLock { $0.append(contentsOf: moved) }
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    func next(into buffer: UnsafeMutableRawBufferPointer) -> (frame: Range<Int>, offload: FrameOffload)? {
        guard let next = outbound.withLock({ $0.popFirst() }) else {
            var count: UInt64 = 0
            _ = read(wakeFD, &count, 8)
            // A send that raced the read above must keep the descriptor readable.
            if outbound.withLock({ !$0.isEmpty }) { wake() }
            return nil
        }
        // `send` admitted only frames up to XEN_NETIF_MAX_TX_SIZE, which fit.
        next.bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        next.continuation?.resume()
        return (0 ..< next.bytes.count, next.offload)
    }
}
