import CXen
import DequeModule
import Glibc
import SystemPackage
import XenLocks
import XenNetProtocol

/// An attachment in memory, for tests and benchmarks: frames pushed with
/// `inject` reach the guest; frames the guest sends go to `onSend`.
/// Its descriptor (an eventfd) is readable while injected frames wait.
public final class MemoryAttachment: NetworkAttachment {
    /// A frame waiting for the guest.
    public struct Frame: Sendable {
        /// The Ethernet frame, without a virtio-net header.
        public var bytes: [UInt8]
        /// Its checksum and segmentation state.
        public var offload: FrameOffload
    }

    private let queue = Locked(Deque<Frame>())
    private let eventFD: Int32
    private let limit: Int
    private let onSend: @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool

    /// `limit` bounds the frames waiting for the guest; `inject` refuses more.
    public init(limit: Int = 1024, onSend: @escaping @Sendable (UnsafeRawBufferPointer, FrameOffload) -> Bool) {
        self.limit = limit
        self.onSend = onSend
        self.eventFD = cxen_eventfd(0, 1)
        precondition(eventFD >= 0, "eventfd failed")
    }

    deinit { close(eventFD) }

    /// The eventfd, readable while injected frames wait.
    public var fileDescriptor: FileDescriptor? { FileDescriptor(rawValue: eventFD) }

    /// Queues a frame for the guest; false when `limit` frames already wait
    /// or the frame is empty or larger than netif can carry.
    @discardableResult
    public func inject(_ bytes: [UInt8], offload: FrameOffload = .none) -> Bool {
        guard !bytes.isEmpty, bytes.count <= Netif.maxPacketSize else { return false }
        let accepted = queue.withLock { q in
            guard q.count < limit else { return false }
            q.append(Frame(bytes: bytes, offload: offload))
            return true
        }
        if accepted {
            var one: UInt64 = 1
            _ = write(eventFD, &one, 8)
        }
        return accepted
    }

    /// Frames injected that the guest has not received yet.
    public var waiting: Int { queue.withLock { $0.count } }

    /// Takes the oldest injected frame into `buffer` at offset 0; nil when none waits.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        let frame: Frame? = queue.withLock { $0.popFirst() }
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

    /// Passes the guest's frame to `onSend` on the queue thread; its answer is this one.
    public func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
        onSend(frame, offload)
    }
}
