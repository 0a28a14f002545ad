import CXen
import Glibc
import Synchronization
import XenHypervisor
import XenLocks
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
    private let port: any GuestPort
    private let events: any EventChannels
    private let buffer: UnsafeMutableRawBufferPointer
    /// What the backend takes; frames asking for more are refused.
    private var backend = NetBackendFeatures(scatterGather: true, segmentation: [.tcpv4, .tcpv6])
    private let thread = DriverThread()
    /// Frames the port gave that netif cannot carry (relaxed: a statistic).
    public var refused: UInt64 { refusedCount.load(ordering: .relaxed) }
    private let refusedCount = Atomic<UInt64>(0)
    /// Why the pump stopped by itself (the backend broke the ring), if it did.
    public var failure: (any Error)? { failureBox.withLock { $0 } }
    private let failureBox = Locked<(any Error)?>(nil)

    public init(queue: NetFrontQueue, port: any GuestPort, events: any EventChannels) {
        self.queue = queue
        self.port = port
        self.events = events
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

    public func start() {
        thread.start(name: "netfront") { [self] in
            do { try run() } catch { failureBox.withLock { $0 = error } }
        }
    }

    /// Stops the thread, waiting at most `timeout` seconds.
    @discardableResult
    public func stop(timeout: Double = 5) -> Bool { thread.stop(timeout: timeout) }

    /// The queue's counters (read without synchronisation: for display).
    public var counters: NetFrontCounters { queue.counters }

    private var canSendLargest: Bool { queue.transmitCapacity > Netif.minimumSlotsPerPacket }

    private func run() throws {
        var fds = [pollfd(fd: thread.stopDescriptor, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: events.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: port.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)]
        while true {
            var worked = try queue.collectTransmitCompletions() > 0
            while canSendLargest, let (range, offload) = try port.nextOutbound(into: buffer) {
                worked = true
                let frame = UnsafeRawBufferPointer(rebasing: buffer[range])
                guard frame.count >= Netif.minimumPacketSize, frame.count <= Netif.maxPacketSize,
                      backend.accepts(offload),
                      try queue.send(frame, checksumBlank: offload.checksumBlank, dataValidated: offload.dataValidated,
                                     gso: offload.gso) else {
                    refusedCount.add(1, ordering: .relaxed)
                    continue
                }
            }
            while let packet = try queue.receive(into: buffer) {
                worked = true
                try port.deliver(UnsafeRawBufferPointer(rebasing: buffer[0 ..< packet.length]),
                                 offload: GuestOffload(checksumBlank: packet.checksumBlank,
                                                       dataValidated: packet.dataValidated, gso: packet.gso))
            }
            if worked { continue }
            if try queue.prepareToSleep() { continue }
            fds[2].events = canSendLargest ? Int16(POLLIN) : 0
            for i in fds.indices { fds[i].revents = 0 }
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), 1000) }
            if n < 0, errno != EINTR { throw HypervisorError.errno(.init(rawValue: errno), "poll in netfront") }
            if fds[0].revents != 0 { return }
            while let p = try events.pending() { try events.unmask(p) }
        }
    }
}
