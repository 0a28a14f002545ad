import CXen
import Glibc
import XenABI
import XenDriverRuntime
import XenHypervisor
import XenNetProtocol
import XenRing

/// Counters of one frontend queue: written by the thread driving it, readable from any
/// thread (atomics, relaxed: statistics, never synchronisation).
public final class NetFrontCounters: Sendable {
    /// Packets put on the tx ring.
    public let txPackets = DriverCounter(0)
    /// Transmit responses whose status was not `NETIF_RSP_OKAY`.
    public let txErrors = DriverCounter(0)
    /// Complete packets copied out of the rx pages.
    public let rxPackets = DriverCounter(0)
    /// Received packets dropped: refused by the parser or the backend said error.
    public let rxDropped = DriverCounter(0)
    /// Responses naming a request that is not outstanding (a hostile backend).
    public let bogusResponses = DriverCounter(0)
    /// Notifications sent on the event channel to the backend.
    public let notifies = DriverCounter(0)
    /// Times the driving thread slept.
    public let sleeps = DriverCounter(0)
    /// Counters all at zero.
    public init() {}
}

/// The data path of one netfront queue, driven by one thread at a time: it transmits
/// from `send`, keeps the rx ring stocked and reassembles received packets.
///
/// Data moves through pages shared once at connect time (a tx page per tx
/// slot, an rx page per rx slot), so the backend grant-copies in and out and
/// nothing is shared or allocated per packet. Rx slot `i` always uses page
/// `i & (size - 1)`: responses land in the slot of their request, as netif.h
/// says netfront relies on.
public final class NetFrontQueue: @unchecked Sendable {
    // @unchecked: one thread at a time drives a queue (its pump, a benchmark
    // loop); nothing here is shared with another thread.
    /// The backend domain the rings and pages are shared with.
    public let backend: DomainID
    /// What the queue did so far; readable from any thread.
    public let counters = NetFrontCounters()
    private var tx: FrontRing<netif_tx_request, netif_tx_response>
    private var rx: FrontRing<netif_rx_request, netif_rx_response>
    private let txPages: SharedPages
    private let rxPages: SharedPages
    private let events: any EventChannels
    private let txDoorbell: Doorbell
    private let rxDoorbell: Doorbell
    private var freeTxIDs: [UInt16]
    private var txInFlight: [Bool]
    private var rxParser = RxPacketParser()
    private var fragments: [TxFragmentRequest] = []

    /// Initialises the rings on `txRing`/`rxRing` (one page each) and posts
    /// every rx buffer. The pools hold one shared page per slot.
    public init(backend: DomainID, txRing: MappedPages, rxRing: MappedPages, txPages: SharedPages, rxPages: SharedPages,
                events: any EventChannels, txPort: EventPort, rxPort: EventPort) throws {
        // Geometry is checked first, so building the rings below cannot fail
        // halfway (a half-initialised noncopyable self cannot be unwound).
        _ = try RingGeometry(request: netif_tx_request.self, response: netif_tx_response.self, pageCount: txRing.count)
        _ = try RingGeometry(request: netif_rx_request.self, response: netif_rx_response.self, pageCount: rxRing.count)
        do {
            self.tx = try FrontRing(initializing: txRing)
        } catch {
            preconditionFailure("checked geometry failed: \(error)")
        }
        do {
            self.rx = try FrontRing(initializing: rxRing)
        } catch {
            preconditionFailure("checked geometry failed: \(error)")
        }
        precondition(txPages.memory.count == Int(self.tx.size) && rxPages.memory.count == Int(self.rx.size), "one page per slot")
        self.backend = backend
        self.txPages = txPages
        self.rxPages = rxPages
        self.events = events
        txDoorbell = Doorbell(events: events, port: txPort, notifies: counters.notifies)
        rxDoorbell = Doorbell(events: events, port: rxPort, notifies: counters.notifies)
        freeTxIDs = (0 ..< UInt16(self.tx.size)).reversed()
        txInFlight = Array(repeating: false, count: Int(self.tx.size))
        fragments.reserveCapacity(Netif.minimumSlotsPerPacket)
        try refillReceive()
    }

    /// Ring slots free for transmit right now.
    public var transmitCapacity: Int { min(freeTxIDs.count, Int(tx.freeRequests)) }

    // MARK: transmit

    /// Sends one frame. Returns false, sending nothing, when the ring has not
    /// enough free slots (call `collectTransmitCompletions()` or wait).
    public func send(_ frame: UnsafeRawBufferPointer, checksumBlank: Bool = false, dataValidated: Bool = false,
                              gso: NetExtraInfo? = nil) throws(NetFrontError) -> Bool {
        guard frame.count >= Netif.minimumPacketSize, frame.count <= Netif.maxPacketSize else {
            throw NetFrontError(.badFrameSize, "frame of \(frame.count) bytes")
        }
        let pages = (frame.count + XenPage.size - 1) / XenPage.size
        let slots = pages + (gso == nil ? 0 : 1)
        guard freeTxIDs.count >= pages, tx.freeRequests >= slots else { return false }
        fragments.removeAll(keepingCapacity: true)
        var offset = 0
        while offset < frame.count {
            let id = freeTxIDs.removeLast()
            txInFlight[Int(id)] = true
            let size = min(XenPage.size, frame.count - offset)
            txPages.memory.page(Int(id)).copyMemory(from: frame.baseAddress! + offset, byteCount: size)
            fragments.append(TxFragmentRequest(ref: txPages.refs[Int(id)], offset: 0, size: UInt16(size), id: id))
            offset += size
        }
        var flags: NetTxFlags = []
        if checksumBlank { flags.insert(.checksumBlank) }
        if dataValidated || checksumBlank { flags.insert(.dataValidated) }
        fragments.withUnsafeBufferPointer { f in
            if let gso {
                // CollectionOfOne, not an array literal: no heap buffer per packet.
                TxPacketEncoder.encode(fragments: f, extras: CollectionOfOne(gso), flags: flags) { tx.produce($0) }
            } else {
                TxPacketEncoder.encode(fragments: f, flags: flags) { tx.produce($0) }
            }
        }
        counters.txPackets.bump()
        if tx.pushRequests() { try ring(txDoorbell) }
        return true
    }

    /// Frees the pages of answered transmit requests; returns how many
    /// responses were taken. Throws when the backend broke the ring.
    @discardableResult
    public func collectTransmitCompletions() throws(NetFrontError) -> Int {
        let available: UInt32
        do { available = try tx.checkForResponses() } catch { throw NetFrontError(.backendFailed, "the backend broke the tx ring", underlying: error) }
        guard available > 0 else { return 0 }
        while let response = tx.nextResponse() {
            if response.status == NetifStatus.null.rawValue { continue }  // an extra's slot
            let id = Int(response.id)
            guard id < txInFlight.count, txInFlight[id] else {
                counters.bogusResponses.bump()
                continue
            }
            txInFlight[id] = false
            freeTxIDs.append(response.id)
            if response.status != NetifStatus.okay.rawValue { counters.txErrors.bump() }
        }
        return Int(available)
    }

    // MARK: receive

    /// Takes the next received packet into `buffer`; returns its length and
    /// offload state, or nil when none is complete. Dropped packets are
    /// counted and skipped. The rx ring is re-stocked as slots free up.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NetFrontError)
        -> (length: Int, checksumBlank: Bool, dataValidated: Bool, gso: NetExtraInfo?)?
    {
        // Buffers go back in batches (a push is a full fence and maybe a
        // notify): once a batch's worth is free, and whenever nothing waits.
        while true {
            let available: UInt32
            do { available = try rx.checkForResponses() } catch { throw NetFrontError(.backendFailed, "the backend broke the rx ring", underlying: error) }
            if available == 0 {
                try refillReceive()
                return nil
            }
            while let response = rx.nextResponse() {
                let index = RingIndex(rx.responseConsumer.rawValue &- 1)  // the slot just consumed
                let complete: Bool
                do { complete = try rxParser.consume(response, at: index) } catch {
                    counters.rxDropped.bump()
                    continue
                }
                guard complete else { continue }
                guard rxParser.totalSize <= buffer.count else {
                    counters.rxDropped.bump()
                    if rx.freeRequests >= Self.refillBatch { try refillReceive() }
                    throw NetFrontError(.bufferTooSmall, "packet of \(rxParser.totalSize) bytes, buffer of \(buffer.count)")
                }
                var length = 0
                for fragment in rxParser.fragments {
                    let page = rxPages.memory.page(Int(fragment.slot.rawValue & (rx.size - 1)))
                    (buffer.baseAddress! + length).copyMemory(from: page + Int(fragment.offset), byteCount: Int(fragment.size))
                    length += Int(fragment.size)
                }
                counters.rxPackets.bump()
                let flags = rxParser.flags
                var gso: NetExtraInfo?
                for extra in rxParser.extras { if case .gso = extra { gso = extra } }
                if rx.freeRequests >= Self.refillBatch { try refillReceive() }
                return (length, flags.contains(.checksumBlank), flags.contains(.dataValidated), gso)
            }
        }
    }

    /// Free rx slots worth a push while packets keep coming.
    static let refillBatch: UInt32 = 32

    /// Posts a request for every free rx slot; notifies if the backend asked.
    private func refillReceive() throws(NetFrontError) {
        guard rx.freeRequests > 0 else { return }
        while rx.freeRequests > 0 {
            let index = rx.requestProducer.rawValue
            let slot = Int(index & (rx.size - 1))
            rx.produce(netif_rx_request(id: UInt16(slot), pad: 0, gref: rxPages.refs[slot].rawValue))
        }
        if rx.pushRequests() { try ring(rxDoorbell) }
    }

    private func ring(_ doorbell: Doorbell) throws(NetFrontError) {
        do { try doorbell.ring() } catch { throw NetFrontError(.eventChannelFailed, "cannot notify the backend", underlying: error) }
    }

    // MARK: waiting

    /// Arms both rings' events; true when work is already waiting (do not
    /// sleep then).
    public func prepareToSleep() throws(NetFrontError) -> Bool {
        do {
            let rxReady = try rx.finalCheckForResponses()
            let txReady = tx.outstandingRequests > 0 ? try tx.finalCheckForResponses() : false
            return rxReady || txReady
        } catch {
            throw NetFrontError(.backendFailed, "the backend broke a ring", underlying: error)
        }
    }
}
