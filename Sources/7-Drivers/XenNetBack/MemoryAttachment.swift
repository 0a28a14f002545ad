import CXen
import DequeModule
import Glibc
import SystemPackage
import XenLocks
import XenNetProtocol

/// An attachment in memory, for tests and benchmarks: frames pushed with
/// `inject` reach the guest; frames the guest sends go to `onSend`.
/// Its descriptor (an eventfd) is readable while injected frames wait.
///
/// With `queues` > 1 it has that many receive queues, as a multi-queue TAP has: an
/// injected frame waits on the queue its flow hashes to (`FlowHash`), so each flow
/// reaches the guest through one vif queue, in order.
public final class MemoryAttachment: NetworkAttachment {
    /// A frame waiting for the guest.
    public struct Frame: Sendable {
        /// The Ethernet frame, without a virtio-net header.
        public var bytes: [UInt8]
        /// Its checksum and segmentation state.
        public var offload: FrameOffload
    }

    private let lanes: [MemoryLane]
    private let more: [MemoryQueueAttachment]
    private let limit: Int
    private let onSend: @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool

    /// `limit` bounds the frames waiting for the guest on each queue; `inject` refuses more.
    /// `onSend` may be called from several vif queue threads at once when `queues` > 1.
    public init(limit: Int = 1024, queues: Int = 1, onSend: @escaping @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool) {
        self.limit = limit
        self.onSend = onSend
        lanes = (0 ..< max(1, queues)).map { _ in MemoryLane() }
        more = lanes.dropFirst().map { MemoryQueueAttachment(lane: $0, onSend: onSend) }
        active = Locked(lanes.count)
    }

    /// This attachment (queue 0), then one per further receive queue the vif reads, at
    /// most `count` in all. Frames then go only to those queues; frames waiting on a queue
    /// no longer read move to the first, in their order.
    public func receiveQueues(_ count: Int) -> [any NetworkAttachment] {
        let n = max(1, min(count, lanes.count))
        active.withLock { $0 = n }
        for lane in lanes.dropFirst(n) { lanes[0].takeAll(from: lane) }
        return [self] + more.prefix(n - 1).map { $0 as any NetworkAttachment }
    }

    /// How many queues the vif reads (all until ``receiveQueues(_:)`` says otherwise).
    private let active: Locked<Int>

    /// The first queue's eventfd, readable while injected frames wait on it.
    public var fileDescriptor: FileDescriptor? { lanes[0].fileDescriptor }

    /// Queues a frame for the guest on the queue its flow hashes to; false when `limit`
    /// frames already wait there or the frame is empty or larger than netif can carry.
    @discardableResult
    public func inject(_ bytes: [UInt8], offload: FrameOffload = .none) -> Bool {
        guard !bytes.isEmpty, bytes.count <= Netif.maxPacketSize else { return false }
        // Under the lock: a frame does not land on a queue receiveQueues just retired.
        return active.withLock { n in
            let lane = bytes.withUnsafeBytes { FlowHash.queue(of: $0, among: n) }
            return lanes[lane].push(Frame(bytes: bytes, offload: offload), limit: limit)
        }
    }

    /// Frames injected that the guest has not received yet, on all queues.
    public var waiting: Int { lanes.reduce(0) { $0 + $1.count } }

    /// Takes the oldest frame injected on the first queue into `buffer` at offset 0; nil
    /// when none waits.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        lanes[0].pop(into: buffer)
    }

    /// Passes the guest's frame to `onSend` on the queue thread; its answer is this one.
    public func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
        onSend(frame, offload)
    }
}

/// One receive queue of a memory attachment: frames waiting in order, and an eventfd
/// readable while any does.
final class MemoryLane: Sendable {
    private let queue = Locked(Deque<MemoryAttachment.Frame>())
    private let eventFD: Int32

    init() {
        eventFD = cxen_eventfd(0, 1)
        precondition(eventFD >= 0, "eventfd failed")
    }

    deinit { close(eventFD) }

    var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: eventFD) }
    var count: Int { queue.withLock { $0.count } }

    func push(_ frame: MemoryAttachment.Frame, limit: Int) -> Bool {
        let accepted = queue.withLock { q in
            guard q.count < limit else { return false }
            q.append(frame)
            return true
        }
        if accepted {
            var one: UInt64 = 1
            _ = write(eventFD, &one, 8)
        }
        return accepted
    }

    /// Moves every frame of `other` behind this lane's, keeping their order.
    func takeAll(from other: MemoryLane) {
        let moved = other.queue.withLock { q in defer { q.removeAll() }; return Array(q) }
        guard !moved.isEmpty else { return }
        queue.withLock { $0.append(contentsOf: moved) }
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    func pop(into buffer: UnsafeMutableRawBufferPointer) -> (frame: Range<Int>, offload: FrameOffload)? {
        let frame: MemoryAttachment.Frame? = queue.withLock { $0.popFirst() }
        guard let frame else {
            // Nothing waits: clear the descriptor's readiness (it is non-blocking).
            var count: UInt64 = 0
            _ = read(eventFD, &count, 8)
            if queue.withLock({ !$0.isEmpty }) { var one: UInt64 = 1; _ = write(eventFD, &one, 8) }
            return nil
        }
        precondition(frame.bytes.count <= buffer.count, "receive buffer smaller than a netif packet")
        frame.bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        return (0 ..< frame.bytes.count, frame.offload)
    }
}

/// A memory attachment's further receive queue, as a vif queue sees it.
final class MemoryQueueAttachment: NetworkAttachment {
    let lane: MemoryLane
    let onSend: @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool
    init(lane: MemoryLane, onSend: @escaping @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool) {
        self.lane = lane
        self.onSend = onSend
    }

    var fileDescriptor: FileDescriptor? { lane.fileDescriptor }
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        lane.pop(into: buffer)
    }
    func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool { onSend(frame, offload) }
}
