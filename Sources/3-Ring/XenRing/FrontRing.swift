import Atomics
import XenABI
import XenHypervisor

/// The frontend's view of a shared ring (`NAME_front_ring_t`): it produces
/// requests and consumes responses.
///
/// Only the frontend initialises the shared header (`SHARED_RING_INIT`). The
/// private indices live here, never in shared memory; the value is
/// non-copyable so that exactly one owner advances them. The ring never
/// notifies: `pushRequests()` says whether the caller must.
public struct FrontRing<Request: BitwiseCopyable, Response: BitwiseCopyable>: ~Copyable {
    /// The shared header.
    public let header: SharedRingHeader
    /// Sizes of this ring.
    public let geometry: RingGeometry
    @usableFromInline let slots: UnsafeMutableRawPointer
    @usableFromInline let mask: UInt32
    @usableFromInline let entrySize: Int
    /// `req_prod_pvt`.
    @usableFromInline var requestsProduced: UInt32
    /// `rsp_cons`.
    @usableFromInline var responsesConsumed: UInt32
    /// `rsp_prod` as last read and validated (read once per batch).
    @usableFromInline var responsesSeen: UInt32

    @inlinable
    init(base: UnsafeMutableRawPointer, geometry: RingGeometry, index: UInt32) {
        self.header = SharedRingHeader(base)
        self.geometry = geometry
        self.slots = base + RingGeometry.headerSize
        self.mask = geometry.entryCount &- 1
        self.entrySize = geometry.entrySize
        self.requestsProduced = index
        self.responsesConsumed = index
        self.responsesSeen = index
    }

    /// Initialises a fresh ring on `pages` (`XEN_FRONT_RING_INIT`:
    /// `SHARED_RING_INIT` then `FRONT_RING_INIT`). Call before granting the
    /// pages to the backend.
    public init(initializing pages: MappedPages) throws(RingError) {
        try self.init(initializing: pages.base, pageCount: pages.count)
    }

    /// As `init(initializing:)`, on `pageCount` pages at `base`.
    public init(initializing base: UnsafeMutableRawPointer, pageCount: Int) throws(RingError) {
        try self.init(initializing: base, pageCount: pageCount, startIndex: RingIndex(0))
    }

    /// A fresh ring whose indices all start at `startIndex` instead of 0: the
    /// state `SHARED_RING_INIT` + `FRONT_RING_ATTACH(startIndex)` leaves after
    /// setting both producers to `startIndex` and both events one past it.
    /// Xen rings start at 0; this exists to run a ring across the 2^32 wrap.
    public init(initializing base: UnsafeMutableRawPointer, pageCount: Int, startIndex: RingIndex) throws(RingError) {
        let geometry = try RingGeometry(request: Request.self, response: Response.self, pageCount: pageCount)
        SharedRingHeader(base).initialize(start: startIndex.rawValue)
        self.init(base: base, geometry: geometry, index: startIndex.rawValue)
    }

    /// Attaches to a ring already initialised, without touching shared memory
    /// (`FRONT_RING_ATTACH`): both private indices start at `index`.
    public init(attachingTo pages: MappedPages, at index: RingIndex) throws(RingError) {
        try self.init(attachingTo: pages.base, pageCount: pages.count, at: index)
    }

    /// As `init(attachingTo:at:)`, on `pageCount` pages at `base`.
    public init(attachingTo base: UnsafeMutableRawPointer, pageCount: Int, at index: RingIndex) throws(RingError) {
        let geometry = try RingGeometry(request: Request.self, response: Response.self, pageCount: pageCount)
        self.init(base: base, geometry: geometry, index: index.rawValue)
    }

    /// Entries in the ring (`RING_SIZE`).
    @inlinable public var size: UInt32 { mask &+ 1 }
    /// `req_prod_pvt`: the next request slot to fill.
    @inlinable public var requestProducer: RingIndex { RingIndex(requestsProduced) }
    /// `rsp_cons`: the next response to consume.
    @inlinable public var responseConsumer: RingIndex { RingIndex(responsesConsumed) }
    /// Requests produced whose responses have not been consumed.
    @inlinable public var outstandingRequests: UInt32 { requestsProduced &- responsesConsumed }
    /// `RING_FREE_REQUESTS`.
    @inlinable public var freeRequests: UInt32 { size &- outstandingRequests }
    /// `RING_FULL`.
    @inlinable public var isFull: Bool { freeRequests == 0 }

    @inlinable func slot(_ index: UInt32) -> UnsafeMutableRawPointer {
        slots + Int(truncatingIfNeeded: index & mask) &* entrySize
    }

    // MARK: producing requests

    /// Lends the next free request slot (`RING_GET_REQUEST(r, req_prod_pvt)`)
    /// for writing in place, then advances `req_prod_pvt`. The slot holds
    /// whatever was last written there. The backend sees it only after
    /// `pushRequests()`. The ring must not be full (a caller bug traps).
    @inlinable
    public mutating func withNextRequestSlot<R, E: Error>(
        _ body: (UnsafeMutablePointer<Request>) throws(E) -> R
    ) throws(E) -> R {
        precondition(!isFull, "request produced on a full ring")
        let result = try body(SlotAccess.typed(slot(requestsProduced), as: Request.self))
        requestsProduced &+= 1
        return result
    }

    /// Writes `request` into the next free slot and advances `req_prod_pvt`.
    ///
    /// The whole entry is copied, padding included, and Swift leaves the
    /// padding bytes of a value unspecified (they may hold stack bytes). To
    /// hand the peer nothing but fields, write them in place with
    /// `withNextRequestSlot` instead.
    @inlinable
    public mutating func produce(_ request: Request) {
        precondition(!isFull, "request produced on a full ring")
        SlotAccess.store(request, to: slot(requestsProduced))
        requestsProduced &+= 1
    }

    /// Publishes the requests produced so far
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`); returns whether the backend
    /// asked to be notified of them (its `req_event` lies in the pushed range).
    @inlinable
    public mutating func pushRequests() -> Bool {
        // The backend never sees req_prod before the requests it covers.
        SharedRingHeader.push(requestsProduced, to: header.requestProducer, checking: header.requestEvent)
    }

    // MARK: consuming responses

    /// Reads `rsp_prod` once, validates it, and returns how many responses
    /// `nextResponse()` can now take. Throws when the backend announces more
    /// than a ring of responses (`RING_RESPONSE_PROD_OVERFLOW`) or responses
    /// to requests never produced; nothing is consumed then.
    @inlinable
    public mutating func checkForResponses() throws(RingError) -> UInt32 {
        // Acquiring: the response slots read after this may not be read
        // before the index that covers them (ring.h leaves this xen_rmb to
        // the caller).
        let producer = header.responseProducer.load(ordering: .acquiring)
        let available = producer &- responsesConsumed
        // One compare each on the hot path; the message is built out of line.
        if available > size || available > outstandingRequests { throw responseProducerError(producer) }
        responsesSeen = producer
        return available
    }

    /// The error for an `rsp_prod` that failed the checks in `checkForResponses`.
    @usableFromInline @inline(never)
    func responseProducerError(_ producer: UInt32) -> RingError {
        let available = producer &- responsesConsumed
        if available > size {
            return RingError(.responseProducerOverflow,
                             "backend rsp_prod is more than \(size) entries past rsp_cons \(responsesConsumed)",
                             producerIndex: RingIndex(producer))
        }
        return RingError(.responseWithoutRequest,
                         "backend announces \(available) responses for \(outstandingRequests) outstanding requests",
                         producerIndex: RingIndex(producer))
    }

    /// Copies the next response out of shared memory (`RING_COPY_RESPONSE`)
    /// and advances `rsp_cons`; nil once the responses counted by the last
    /// `checkForResponses()` are taken. Shared memory is not re-read.
    @inlinable
    public mutating func nextResponse() -> Response? {
        if responsesConsumed == responsesSeen { return nil }
        let response = SlotAccess.copy(slot(responsesConsumed), as: Response.self)
        responsesConsumed &+= 1
        return response
    }

    /// Asks the backend to notify of no response for now, for a consumer that polls:
    /// `rsp_event` moves a ring's worth past `rsp_cons`, beyond every response to what is
    /// outstanding. ``finalCheckForResponses()`` asks for the next one again; call it
    /// before anyone sleeps on the ring.
    @inlinable
    public mutating func postponeResponseNotifications() {
        // Relaxed: a missed postponement costs one notification; the final check's fence
        // orders the re-arming store.
        header.responseEvent.store(responsesConsumed &+ size &+ 1, ordering: .relaxed)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: true when responses are waiting;
    /// otherwise asks the backend to notify on the next one (`rsp_event =
    /// rsp_cons + 1`) and checks once more, closing the race with a response
    /// pushed in between. Sleep only when this returns false.
    @inlinable
    public mutating func finalCheckForResponses() throws(RingError) -> Bool {
        if try checkForResponses() > 0 { return true }
        // The backend's push sees this rsp_event, or the re-check sees its responses.
        SharedRingHeader.askToBeNotified(at: header.responseEvent, after: responsesConsumed)
        return try checkForResponses() > 0
    }
}
