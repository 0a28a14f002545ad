import Atomics
import CXen
import Glibc
import XenABI
import XenHypervisor
import XenLocks
import XenNetProtocol
import XenRing

/// What a vif queue was told at connect time.
public struct VifConfiguration: Sendable {
    /// The frontend's domain, owner of every grant on the rings.
    public var frontend: DomainID
    /// Local ports: the same one for both rings unless the frontend asked
    /// for split event channels.
    public var txPort: EventPort
    public var rxPort: EventPort
    /// GSO types the frontend takes on receive (`feature-gso-tcpv4/6`).
    public var receiveGSO: Set<NetGSOType>
    /// Whether the frontend takes frames with a blank checksum on receive
    /// (not `feature-no-csum-offload`).
    public var receiveChecksumBlank: Bool

    public init(frontend: DomainID, txPort: EventPort, rxPort: EventPort,
                receiveGSO: Set<NetGSOType> = [], receiveChecksumBlank: Bool = true) {
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
    // @unchecked: everything below but `counters` and `thread` is touched only by
    // the queue thread once it has started.
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
    public let configuration: VifConfiguration
    public let counters: VifCounters

    private var parser = TxPacketParser()
    private let txBuffer: UnsafeMutableRawBufferPointer
    private let rxBuffer: UnsafeMutableRawBufferPointer
    private let segments: UnsafeMutableBufferPointer<GrantCopySegment>
    private let slotIDs: UnsafeMutableBufferPointer<UInt16>
    /// The descriptors the thread sleeps on (stop, event channel, attachment),
    /// built once: sleeping does not allocate.
    private let pollSet: UnsafeMutableBufferPointer<pollfd>
    /// Set by `stop()`; the thread checks it every turn, not only when it sleeps.
    private let stopping = ManagedAtomic<Bool>(false)
    private let thread = DriverThread()
    private let cpu: Int32?
    /// Told, on the queue thread, when the queue stopped by itself.
    private let onFailure: (@Sendable (any Error) -> Void)?
    /// Why the queue stopped by itself (a ring-protocol violation), if it did; the thread
    /// writes it, anyone may read it.
    public var failure: (any Error)? { failureBox.withLock { $0 } }
    private let failureBox = Locked<(any Error)?>(nil)

    /// Frames handled per wake-up and direction before the other gets a turn.
    static let batch = 64
    static let maxSlots = Netif.minimumSlotsPerPacket + Netif.maxExtras

    public init(txRing: MappedPages, rxRing: MappedPages, events: any EventChannels, mapper: any GrantMapper,
                attachment: any NetworkAttachment, configuration: VifConfiguration,
                counters: VifCounters = VifCounters(), cpu: Int32? = nil,
                onFailure: (@Sendable (any Error) -> Void)? = nil) throws(RingError) {
        self.cpu = cpu
        self.onFailure = onFailure
        tx = try BackRing(attachingTo: txRing)
        rx = try BackRing(attachingTo: rxRing)
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
        let descriptors = [thread.stopDescriptor, events.fileDescriptor.rawValue] + (attachment.fileDescriptor.map { [$0.rawValue] } ?? [])
        pollSet = .allocate(capacity: descriptors.count)
        for (i, fd) in descriptors.enumerated() { pollSet[i] = pollfd(fd: fd, events: Int16(POLLIN), revents: 0) }
    }

    deinit {
        txBuffer.deallocate()
        rxBuffer.deallocate()
        segments.deallocate()
        slotIDs.deallocate()
        pollSet.deallocate()
    }

    /// Requests the frontend has published on the tx ring and this queue has
    /// not answered yet (`req_prod - rsp_prod`), read from shared memory with
    /// relaxed loads: a figure for display, never used for decisions.
    public var transmitRingFill: UInt32 {
        txHeader.requestProducer.load(ordering: .relaxed) &- txHeader.responseProducer.load(ordering: .relaxed)
    }

    /// Receive buffers the frontend has posted and this queue has not filled.
    public var receiveBuffersPosted: UInt32 {
        rxHeader.requestProducer.load(ordering: .relaxed) &- rxHeader.responseProducer.load(ordering: .relaxed)
    }

    /// Starts the queue thread.
    public func start() {
        thread.start(name: "vif \(configuration.frontend.rawValue)", cpu: cpu.map(Int.init)) { [self] in run() }
    }

    /// Stops the thread and waits for it, at most `timeout` seconds; returns
    /// false if it did not stop in time.
    @discardableResult
    public func stop(timeout: Double = 5) -> Bool {
        guard thread.isStarted else { return true }
        stopping.store(true, ordering: .relaxed)
        return thread.stop(timeout: timeout)
    }

    // MARK: the queue thread

    private func run() {
        do {
            while !stopping.load(ordering: .relaxed) {
                var worked = try serviceTransmit()
                worked = try serviceReceive() || worked
                if worked { continue }
                // Sleep only once both rings' final checks say idle. An
                // attachment without a descriptor is polled after a short sleep.
                if try tx.finalCheckForRequests() { continue }
                if try rx.finalCheckForRequests(), attachment.fileDescriptor != nil, attachmentHasFrames { continue }
                if try !sleep() { return }
            }
        } catch {
            failureBox.withLock { $0 = error }
            onFailure?(error)
        }
    }

    private var attachmentHasFrames: Bool {
        guard let fd = attachment.fileDescriptor else { return false }
        var pfd = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) > 0
    }

    /// Sleeps until an event, a frame or stop; false on stop.
    private func sleep() throws -> Bool {
        counters.sleeps.bump()
        for i in pollSet.indices { pollSet[i].revents = 0 }
        // An attachment without a descriptor is polled by waking up regularly.
        let timeout: Int32 = pollSet.count == 2 ? 1 : 1000
        let n = poll(pollSet.baseAddress, nfds_t(pollSet.count), timeout)
        if n < 0, errno != EINTR { throw HypervisorError.errno(.init(rawValue: errno), "poll in vif queue") }
        if pollSet[0].revents != 0 { return false }
        while let port = try events.pending() { try events.unmask(port) }
        return true
    }

    private func notify(_ port: EventPort) throws {
        try events.notify(port)
        counters.notifies.bump()
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
        if tx.pushResponses() { try notify(configuration.txPort) }
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
        if produced, rx.pushResponses() { try notify(configuration.rxPort) }
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
