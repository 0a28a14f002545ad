import Atomics
import XenABI
import XenHypervisor

/// The backend's view of a shared ring (`NAME_back_ring_t`): it consumes
/// requests and produces responses.
///
/// The backend never initialises the shared header; it attaches to the
/// frontend's (`BACK_RING_INIT` / `BACK_RING_ATTACH`). The frontend is
/// untrusted: `req_prod` is read once per batch and validated, each request
/// is copied out once, and consumption stops at the ring size. The ring never
/// notifies: `pushResponses()` says whether the caller must.
public struct BackRing<Request: BitwiseCopyable, Response: BitwiseCopyable>: ~Copyable {
    /// The shared header.
    public let header: SharedRingHeader
    /// Sizes of this ring.
    public let geometry: RingGeometry
    @usableFromInline let slots: UnsafeMutableRawPointer
    @usableFromInline let mask: UInt32
    @usableFromInline let entrySize: Int
    /// `rsp_prod_pvt`.
    @usableFromInline var responsesProduced: UInt32
    /// `req_cons`.
    @usableFromInline var requestsConsumed: UInt32
    /// `req_prod` as last read and validated (read once per batch).
    @usableFromInline var requestsSeen: UInt32

    @inlinable
    init(base: UnsafeMutableRawPointer, geometry: RingGeometry, index: UInt32) {
        self.header = SharedRingHeader(base)
        self.geometry = geometry
        self.slots = base + RingGeometry.headerSize
        self.mask = geometry.entryCount &- 1
        self.entrySize = geometry.entrySize
        self.responsesProduced = index
        self.requestsConsumed = index
        self.requestsSeen = index
    }

    /// Attaches to the ring the frontend initialised on `pages`
    /// (`BACK_RING_INIT`): both private indices start at 0.
    public init(attachingTo pages: MappedPages) throws(RingError) {
        try self.init(attachingTo: pages.base, pageCount: pages.count, at: RingIndex(0))
    }

    /// Attaches with both private indices at `index` (`BACK_RING_ATTACH`),
    /// e.g. a backend reconnecting to a live ring at the `rsp_prod` it
    /// published before. Shared memory is not touched.
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
    /// `req_cons`: the next request to consume.
    @inlinable public var requestConsumer: RingIndex { RingIndex(requestsConsumed) }
    /// `rsp_prod_pvt`: the next response slot to fill.
    @inlinable public var responseProducer: RingIndex { RingIndex(responsesProduced) }
    /// Requests consumed and not yet answered.
    @inlinable public var unansweredRequests: UInt32 { requestsConsumed &- responsesProduced }

    @inlinable func slot(_ index: UInt32) -> UnsafeMutableRawPointer {
        slots + Int(truncatingIfNeeded: index & mask) &* entrySize
    }

    // MARK: consuming requests

    /// Reads `req_prod` once, validates it, and returns how many requests
    /// `nextRequest()` can now take (`RING_HAS_UNCONSUMED_REQUESTS`: bounded
    /// by the responses still owed, so consumption stops at the ring size).
    ///
    /// Throws when the frontend's index runs more than a ring ahead
    /// (`RING_REQUEST_PROD_OVERFLOW`) or went back behind requests already
    /// consumed; nothing is consumed then and the driver should disconnect.
    @inlinable
    public mutating func checkForRequests() throws(RingError) -> UInt32 {
        // Acquiring: the request slots read after this may not be read before
        // the index that covers them (ring.h leaves this xen_rmb to the caller).
        let producer = header.requestProducer.load(ordering: .acquiring)
        let ahead = producer &- responsesProduced
        // One compare each on the hot path; the message is built out of line.
        if ahead > size || ahead < unansweredRequests { throw requestProducerError(producer) }
        requestsSeen = producer
        // After the checks above, producer - req_cons <= size - (req_cons - rsp_prod_pvt),
        // so this is the min() of XEN_RING_NR_UNCONSUMED_REQUESTS.
        return producer &- requestsConsumed
    }

    /// The error for a `req_prod` that failed the checks in `checkForRequests`.
    @usableFromInline @inline(never)
    func requestProducerError(_ producer: UInt32) -> RingError {
        if producer &- responsesProduced > size {
            return RingError(.requestProducerOverflow,
                             "frontend req_prod is more than \(size) entries past rsp_prod_pvt \(responsesProduced)",
                             producerIndex: RingIndex(producer))
        }
        return RingError(.requestProducerWentBack,
                         "frontend req_prod went back behind req_cons \(requestsConsumed)",
                         producerIndex: RingIndex(producer))
    }

    /// Copies the next request out of shared memory (`RING_COPY_REQUEST`)
    /// and advances `req_cons`; nil once the requests counted by the last
    /// `checkForRequests()` are taken, or when taking one more would overrun
    /// the responses owed (`RING_REQUEST_CONS_OVERFLOW`). Validate the copy;
    /// shared memory is not re-read.
    @inlinable
    public mutating func nextRequest() -> Request? {
        if requestsConsumed == requestsSeen { return nil }
        // RING_REQUEST_CONS_OVERFLOW: a slot still owed a response is not a new request.
        if requestsConsumed &- responsesProduced >= size { return nil }
        let request = SlotAccess.copy(slot(requestsConsumed), as: Request.self)
        requestsConsumed &+= 1
        return request
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true when requests are waiting;
    /// otherwise asks the frontend to notify on the next one (`req_event =
    /// req_cons + 1`) and checks once more, closing the race with a request
    /// pushed in between. Sleep only when this returns false.
    @inlinable
    public mutating func finalCheckForRequests() throws(RingError) -> Bool {
        if try checkForRequests() > 0 { return true }
        // The frontend's push sees this req_event, or the re-check sees its requests.
        SharedRingHeader.askToBeNotified(at: header.requestEvent, after: requestsConsumed)
        return try checkForRequests() > 0
    }

    // MARK: producing responses

    /// Lends the next response slot (`RING_GET_RESPONSE(r, rsp_prod_pvt)`)
    /// for writing in place, then advances `rsp_prod_pvt`. There must be a
    /// consumed request not yet answered (a caller bug traps).
    @inlinable
    public mutating func withNextResponseSlot<R, E: Error>(
        _ body: (UnsafeMutablePointer<Response>) throws(E) -> R
    ) throws(E) -> R {
        precondition(unansweredRequests > 0, "response produced without a consumed request")
        let result = try body(SlotAccess.typed(slot(responsesProduced), as: Response.self))
        responsesProduced &+= 1
        return result
    }

    /// Writes `response` into the next slot and advances `rsp_prod_pvt`.
    ///
    /// The whole entry is copied, padding included, and Swift leaves the
    /// padding bytes of a value unspecified (they may hold stack bytes): a
    /// backend that must not leak its stack to a guest (XSA-216) writes the
    /// fields in place with `withNextResponseSlot` instead.
    @inlinable
    public mutating func produce(_ response: Response) {
        precondition(unansweredRequests > 0, "response produced without a consumed request")
        SlotAccess.store(response, to: slot(responsesProduced))
        responsesProduced &+= 1
    }

    /// Publishes the responses produced so far
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`); returns whether the frontend
    /// asked to be notified of them (its `rsp_event` lies in the pushed range).
    @inlinable
    public mutating func pushResponses() -> Bool {
        // The frontend never sees rsp_prod before the responses it covers.
        SharedRingHeader.push(responsesProduced, to: header.responseProducer, checking: header.responseEvent)
    }
}
