import Atomics
import CXen
import Glibc
import XenABI
import XenDriverRuntime
import XenHypervisor
import XenLocks
import XenNetProtocol
import XenRing

/// What a vif queue was told at connect time.
public struct VifConfiguration: Sendable {
    /// The frontend's domain, owner of every grant on the rings.
    public var frontend: DomainID
    /// The local port for the tx ring: the same one for both rings unless the frontend
    /// asked for split event channels (`event-channel-tx`).
    public var txPort: EventPort
    /// The local port for the rx ring (`event-channel-rx`), or ``txPort``.
    public var rxPort: EventPort
    /// GSO types the frontend takes on receive (`feature-gso-tcpv4/6`).
    public var receiveGSO: Set<NetGSOType>
    /// Whether the frontend takes frames with a blank checksum on receive
    /// (not `feature-no-csum-offload`).
    public var receiveChecksumBlank: Bool
    /// Whether this queue takes frames from its attachment for the guest. False for the
    /// extra queues of a vif whose attachment has fewer receive queues than the vif
    /// (``NetworkAttachment/receiveQueues(_:)``): they only transmit, and one reader keeps received
    /// frames in order.
    public var receives: Bool

    /// Describes one queue's set-up; by default the frontend takes no GSO and takes
    /// blank checksums, and the queue receives.
    public init(frontend: DomainID, txPort: EventPort, rxPort: EventPort,
                receiveGSO: Set<NetGSOType> = [], receiveChecksumBlank: Bool = true, receives: Bool = true) {
        self.receives = receives
        self.frontend = frontend
        self.txPort = txPort
        self.rxPort = rxPort
        self.receiveGSO = receiveGSO
        self.receiveChecksumBlank = receiveChecksumBlank
    }
}

/// One netback queue: a thread that serves a frontend's tx and rx rings.
///
/// Transmit: each packet is parsed from its slots (copied once), grant-copied
/// out of the guest into one buffer and handed to the attachment; every slot
/// is answered. Receive: a frame from the attachment is grant-copied into the
/// buffers the guest posted, one page per slot. A bad packet is refused with
/// an error response and counted; a ring-protocol violation stops this queue
/// only. Buffers are allocated once: the data path does not allocate.
public final class VifQueue: @unchecked Sendable {
    // @unchecked: everything below but `counters`, `runtime` and `released` is touched
    // only by the queue thread once it has started.
    private var tx: BackRing<netif_tx_request, netif_tx_response>
    private var rx: BackRing<netif_rx_request, netif_rx_response>
    /// The shared headers, for reading occupancy from other threads.
    private let txHeader: SharedRingHeader
    private let rxHeader: SharedRingHeader
    /// Entries in the tx ring.
    public let transmitRingSize: UInt32
    private let events: any EventChannels
    private let mapper: any GrantMapper
    private let attachment: any NetworkAttachment
    /// What the queue was told at connect time.
    public let configuration: VifConfiguration
    /// What the queue did so far; readable from any thread.
    public let counters: VifCounters

    private var parser = TxPacketParser()
    private let txBuffer: UnsafeMutableRawBufferPointer
    private let rxBuffer: UnsafeMutableRawBufferPointer
    private let segments: UnsafeMutableBufferPointer<GrantCopySegment>
    private let slotIDs: UnsafeMutableBufferPointer<UInt16>
    private let runtime: DriverRuntime
    private let txDoorbell: Doorbell
    private let rxDoorbell: Doorbell
    private let cpu: Int32?
    /// Told, on the queue thread, when the queue stopped by itself.
    private let onFailure: (@Sendable (any Error) -> Void)?
    /// Why the queue stopped by itself (a ring-protocol violation), if it did; the thread
    /// writes it, anyone may read it.
    public var failure: (any Error)? { runtime.failure }
    /// Where the queue's thread is (`.joined` once it touches nothing any more).
    public var threadState: DriverRuntime.State { runtime.state }
    private let rings: (tx: GrantMapping, rx: GrantMapping)
    private let released = Locked(false)

    /// Frames handled per wake-up and direction before the other gets a turn.
    static let batch = 64
    static let maxSlots = Netif.minimumSlotsPerPacket + Netif.maxExtras

    /// Attaches to the rings the frontend initialised (mapped writable through `mapper`).
    /// From now on the queue owns `txRing`, `rxRing` and `events` (with the
    /// configuration's ports bound): it unmaps, unbinds and closes them when it stops,
    /// once its thread has exited (if this throws, the caller still owns them).
    public init(txRing: GrantMapping, rxRing: GrantMapping, events: any EventChannels, mapper: any GrantMapper,
                attachment: any NetworkAttachment, configuration: VifConfiguration,
                counters: VifCounters = VifCounters(), cpu: Int32? = nil,
                onFailure: (@Sendable (any Error) -> Void)? = nil) throws(RingError) {
        self.cpu = cpu
        self.onFailure = onFailure
        tx = try BackRing(attachingTo: txRing.memory)
        rx = try BackRing(attachingTo: rxRing.memory)
        rings = (txRing, rxRing)
        runtime = DriverRuntime(sleeps: counters.sleeps)
        txDoorbell = Doorbell(events: events, port: configuration.txPort, notifies: counters.notifies)
        rxDoorbell = Doorbell(events: events, port: configuration.rxPort, notifies: counters.notifies)
        txHeader = tx.header
        rxHeader = rx.header
        transmitRingSize = tx.size
        self.events = events
        self.mapper = mapper
        self.attachment = attachment
        self.configuration = configuration
        self.counters = counters
        txBuffer = .allocate(byteCount: Netif.maxPacketSize, alignment: 64)
        rxBuffer = .allocate(byteCount: Netif.minimumSlotsPerPacket * XenPage.size + 64, alignment: 64)
        segments = .allocate(capacity: Self.maxSlots)
        slotIDs = .allocate(capacity: Self.maxSlots)
    }

    deinit {
        txBuffer.deallocate()
        rxBuffer.deallocate()
        segments.deallocate()
        slotIDs.deallocate()
    }

    /// Requests the frontend has published on the tx ring and this queue has
    /// not answered yet (`req_prod - rsp_prod`), read from shared memory with
    /// relaxed loads: a figure for display, never used for decisions; 0 once the queue
    /// has stopped (read under the lock `release` takes before it unmaps the rings).
    public var transmitRingFill: UInt32 {
        released.withLock { gone in
            gone ? 0 : txHeader.requestProducer.load(ordering: .relaxed) &- txHeader.responseProducer.load(ordering: .relaxed)
        }
    }

    /// Receive buffers the frontend has posted and this queue has not filled; 0 once stopped.
    public var receiveBuffersPosted: UInt32 {
        released.withLock { gone in
            gone ? 0 : rxHeader.requestProducer.load(ordering: .relaxed) &- rxHeader.responseProducer.load(ordering: .relaxed)
        }
    }

    /// Starts the queue thread.
    public func start() {
        runtime.start(name: "vif \(configuration.frontend.rawValue)", cpu: cpu.map(Int.init), service: Service(self), events: events,
                      extraDescriptors: configuration.receives ? attachment.fileDescriptor.map { [$0.rawValue] } ?? [] : [],
                      onFailure: onFailure)
    }

    /// Stops the thread, waits until it has exited however busy the frontend keeps the
    /// rings, then releases the rings and the event channel. Blocks: async callers use
    /// ``stopped()``.
    public func stop() { release(runtime.stop()) }

    /// ``stop()`` without holding a thread of the cooperative pool while it waits.
    public func stopped() async { release(await runtime.stopped()) }

    private func release(_ exited: borrowing ThreadExited) {
        guard released.withLock({ r in defer { r = true }; return !r }) else { return }
        try? mapper.unmap(rings.tx)
        try? mapper.unmap(rings.rx)
        try? events.unbind(configuration.txPort)
        if configuration.rxPort != configuration.txPort { try? events.unbind(configuration.rxPort) }
        events.close()
    }

    // MARK: the queue thread

    /// The queue's steps as the runtime calls them; a separate object, so they are not
    /// part of the queue's API.
    private final class Service: DriverService {
        let queue: VifQueue
        init(_ queue: VifQueue) { self.queue = queue }
        func serviceTurn() throws -> Bool { try queue.serviceTurn() }
        func prepareToSleep(_ poll: PollSet) throws -> Bool { try queue.prepareToSleep(poll) }
    }

    /// Each direction handles at most ``batch`` frames a turn.
    private func serviceTurn() throws -> Bool {
        let worked = try serviceTransmit()
        guard configuration.receives else { return worked }
        return try serviceReceive() || worked
    }

    private func prepareToSleep(_ poll: PollSet) throws -> Bool {
        // Sleep only once both rings' final checks say idle.
        if try tx.finalCheckForRequests() { return true }
        guard configuration.receives else {
            poll.timeoutMilliseconds = 1000
            return false
        }
        if try rx.finalCheckForRequests(), attachment.fileDescriptor != nil, attachmentHasFrames { return true }
        // An attachment without a descriptor is polled by waking up regularly.
        poll.timeoutMilliseconds = attachment.fileDescriptor == nil ? 1 : 1000
        return false
    }

    private var attachmentHasFrames: Bool {
        guard let fd = attachment.fileDescriptor else { return false }
        var pfd = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) > 0
    }

    // MARK: transmit (guest to attachment)

    private func serviceTransmit() throws -> Bool {
        guard try tx.checkForRequests() > 0 else { return false }
        var handled = 0
        while handled < Self.batch, let slot = tx.nextRequest() {
            let complete: Bool
            do {
                complete = try parser.consume(slot)
            } catch {
                counters.countRefused(error.code)
                respondTransmit(.error)
                handled += 1
                continue
            }
            if complete {
                respondTransmit(try transmitPacket())
                handled += 1
            }
        }
        if tx.pushResponses() { try txDoorbell.ring() }
        return true
    }

    /// Copies the parsed packet out of the guest and hands it on.
    private func transmitPacket() throws -> NetifStatus {
        var count = 0
        var length = 0
        for fragment in parser.fragments where fragment.size > 0 {
            segments[count] = GrantCopySegment(
                source: .foreign(domain: configuration.frontend, ref: fragment.ref, offset: fragment.offset),
                destination: .local(txBuffer.baseAddress! + length), length: fragment.size)
            length += Int(fragment.size)
            count += 1
        }
        try mapper.copy(UnsafeMutableBufferPointer(rebasing: segments[0 ..< count]))
        for i in 0 ..< count where segments[i].status != .okay {
            counters.badGrants.bump()
            return .error
        }
        var gso: NetExtraInfo?
        for extra in parser.extras { if case .gso = extra { gso = extra } }
        let offload = FrameOffload(checksumBlank: parser.flags.contains(.checksumBlank),
                                   dataValidated: parser.flags.contains(.dataValidated), gso: gso)
        let frame = UnsafeRawBufferPointer(rebasing: txBuffer[0 ..< length])
        let sent = (try? attachment.send(frame, offload: offload)) ?? false
        if sent {
            counters.txPackets.bump()
            counters.txBytes.bump(UInt64(length))
        } else {
            // Left the vif but not delivered, as a NIC's full queue: the guest
            // is told OKAY (as Linux netback does) and the drop is counted.
            counters.txDroppedAttachment.bump()
        }
        return .okay
    }

    /// Answers every slot of the current packet: requests with `status`,
    /// extras with `NETIF_RSP_NULL`.
    private func respondTransmit(_ status: NetifStatus) {
        for slot in parser.responses {
            switch slot {
            case .request(let id): tx.produce(netif_tx_response(id: id, status: status.rawValue))
            case .extra: tx.produce(netif_tx_response(id: 0, status: NetifStatus.null.rawValue))
            }
        }
    }

    // MARK: receive (attachment to guest)

    private func serviceReceive() throws -> Bool {
        var produced = false
        var handled = 0
        while handled < Self.batch {
            let posted = try rx.checkForRequests()
            let received: (frame: Range<Int>, offload: FrameOffload)?
            do {
                received = try attachment.receive(into: rxBuffer)
            } catch let error as NetProtocolError {
                counters.countRefused(error.code)
                handled += 1
                continue
            }
            guard let (range, offload) = received else { break }
            handled += 1
            if try deliver(range, offload, posted: posted) { produced = true }
        }
        if produced, rx.pushResponses() { try rxDoorbell.ring() }
        return handled > 0
    }

    /// Puts one frame into the guest's posted buffers; false when dropped
    /// before any request was consumed.
    private func deliver(_ range: Range<Int>, _ offload: FrameOffload, posted: UInt32) throws -> Bool {
        var gso: NetExtraInfo?
        if let extra = offload.gso {
            guard case .gso(_, let type, _) = extra, configuration.receiveGSO.contains(type) else {
                counters.countRefused(.badGSO)
                return false
            }
            gso = extra
        }
        if offload.checksumBlank, !configuration.receiveChecksumBlank {
            counters.countRefused(.unsupportedFlag)
            return false
        }
        guard let layout = RxPacketLayout(length: range.count, extraCount: gso == nil ? 0 : 1) else {
            counters.countRefused(.packetTooLarge)
            return false
        }
        guard posted >= layout.slotCount else {
            counters.rxDroppedNoBuffers.bump()
            return false
        }
        var count = 0
        for k in 0 ..< layout.slotCount {
            // Cannot be nil: `posted` requests were counted just before.
            let request = rx.nextRequest()!
            slotIDs[k] = request.id
            if case .data(let bytes) = layout.slot(k) {
                segments[count] = GrantCopySegment(
                    source: .local(rxBuffer.baseAddress! + range.lowerBound + bytes.lowerBound),
                    destination: .foreign(domain: configuration.frontend, ref: GrantRef(request.gref), offset: 0),
                    length: UInt16(bytes.count))
                count += 1
            }
        }
        try mapper.copy(UnsafeMutableBufferPointer(rebasing: segments[0 ..< count]))
        let copied = (0 ..< count).allSatisfy { segments[$0].status == .okay }
        var flags: NetRxFlags = []
        if offload.checksumBlank { flags = [.checksumBlank, .dataValidated] } else if offload.dataValidated { flags = .dataValidated }
        for k in 0 ..< layout.slotCount {
            if !copied {
                // Each slot answers alone with an error: the guest drops them.
                rx.produce(netif_rx_response(id: slotIDs[k], offset: 0, flags: 0, status: NetifStatus.error.rawValue))
            } else if case .extra = layout.slot(k), let gso {
                rx.produce(NetExtraInfo.slot(gso.encoded(more: false), as: netif_rx_response.self))
            } else {
                rx.produce(layout.response(slot: k, id: slotIDs[k], flags: flags))
            }
        }
        if copied {
            counters.rxPackets.bump()
            counters.rxBytes.bump(UInt64(range.count))
        } else {
            counters.badGrants.bump()
        }
        return true
    }
}
