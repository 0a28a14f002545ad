import CXen
import Glibc
import XenDriverRuntime
import XenHypervisor
import XenNetProtocol

/// The thread that drives a netfront queue for a `GuestPort`: frames the
/// port gives are transmitted, received frames are delivered to it, and the
/// thread sleeps on the event channel and the port only after both rings'
/// final checks.
///
/// Back-pressure: while the tx ring cannot take a largest packet, the port is
/// not read, so its frames wait where they are (a TAP's kernel queue, a
/// caller's `send`), never piling up here.
public final class NetFrontPump: @unchecked Sendable {
    // @unchecked: the queue and buffer are used only by the pump thread.
    private let queue: NetFrontQueue
    /// The guest port the pump serves.
    public let port: any GuestPort
    private let events: any EventChannels
    private let buffer: UnsafeMutableRawBufferPointer
    /// What the backend takes; frames asking for more are refused.
    private var backend = NetBackendFeatures(scatterGather: true, segmentation: [.tcpv4, .tcpv6])
    private let runtime: DriverRuntime
    /// Frames the port gave that netif cannot carry (relaxed: a statistic).
    public var refused: UInt64 { refusedCount.value }
    private let refusedCount = DriverCounter(0)
    /// Why the pump stopped by itself (the backend broke the ring), if it did.
    public var failure: (any Error)? { runtime.failure }
    /// Where the pump's thread is (`.joined` once it touches nothing any more).
    public var threadState: DriverRuntime.State { runtime.state }

    /// Whether the pump takes frames from the port to send; false for a queue of a
    /// multi-queue vif that only delivers (its port has fewer queues than the vif).
    public let transmits: Bool

    /// Creates a pump between `queue` and `port`, sleeping on `events` (which `queue`'s ports
    /// are bound on); the thread starts with ``start(backend:)``. From then on only the pump's
    /// thread touches `queue`. Without `transmits` it only delivers what arrives.
    public init(queue: NetFrontQueue, port: any GuestPort, events: any EventChannels, transmits: Bool = true) {
        self.transmits = transmits
        self.queue = queue
        self.port = port
        self.events = events
        runtime = DriverRuntime(sleeps: queue.counters.sleeps)
        buffer = .allocate(byteCount: Netif.minimumSlotsPerPacket * 4096 + 64, alignment: 64)
    }

    deinit {
        buffer.deallocate()
    }

    /// Starts the pump for a backend with `features` (tells the port first).
    public func start(backend features: NetBackendFeatures) throws {
        try port.backendConnected(features)
        backend = features
        start()
    }

    /// Starts the pump as for a backend that takes everything netif carries (scatter-gather,
    /// TCPv4 and TCPv6 segmentation, blank checksums), without telling the port.
    public func start() {
        runtime.start(name: "netfront", service: Service(self), events: events,
                      extraDescriptors: transmits ? [port.fileDescriptor.rawValue] : [])
    }

    /// Stops the thread and waits until it has exited; what it used (the queue's rings
    /// and pages, the port) may be released after. Blocks: async callers use ``stopped()``.
    @discardableResult
    public func stop() -> ThreadExited { runtime.stop() }

    /// ``stop()`` without holding a thread of the cooperative pool while it waits.
    @discardableResult
    public func stopped() async -> ThreadExited { await runtime.stopped() }

    /// The queue's counters.
    public var counters: NetFrontCounters { queue.counters }

    private var canSendLargest: Bool { queue.transmitCapacity > Netif.minimumSlotsPerPacket }

    /// Received packets delivered a turn: a backend that keeps the rx ring full must not
    /// keep one turn going.
    static let batch = 64

    /// The pump's steps as the runtime calls them; a separate object, so they are not
    /// part of the pump's API.
    private final class Service: DriverService {
        let pump: NetFrontPump
        init(_ pump: NetFrontPump) { self.pump = pump }
        func serviceTurn() throws -> Bool { try pump.serviceTurn() }
        func prepareToSleep(_ poll: PollSet) throws -> Bool { try pump.prepareToSleep(poll) }
    }

    private func serviceTurn() throws -> Bool {
        var worked = try queue.collectTransmitCompletions() > 0
        // Bounded by the ring: each frame sent takes slots.
        while transmits, canSendLargest, let (range, offload) = try port.nextOutbound(into: buffer) {
            worked = true
            let frame = UnsafeRawBufferPointer(rebasing: buffer[range])
            guard frame.count >= Netif.minimumPacketSize, frame.count <= Netif.maxPacketSize,
                  backend.accepts(offload),
                  try queue.send(frame, checksumBlank: offload.checksumBlank, dataValidated: offload.dataValidated,
                                 gso: offload.gso) else {
                refusedCount.bump()
                continue
            }
        }
        var delivered = 0
        while delivered < Self.batch, let packet = try queue.receive(into: buffer) {
            worked = true
            delivered += 1
            try port.deliver(UnsafeRawBufferPointer(rebasing: buffer[0 ..< packet.length]),
                             offload: FrameOffload(checksumBlank: packet.checksumBlank,
                                                   dataValidated: packet.dataValidated, gso: packet.gso))
        }
        return worked
    }

    private func prepareToSleep(_ poll: PollSet) throws -> Bool {
        if try queue.prepareToSleep() { return true }
        // The port only while a largest frame fits: back-pressure leaves frames in it.
        if transmits { poll.watch(extra: 0, canSendLargest) }
        return false
    }
}
