import CXen
import DequeModule
import Glibc
import Synchronization
import XenABI
import XenBlockProtocol
import XenDriverRuntime
import XenHypervisor
import XenLocks
import XenRing

/// A queue thread's doorbell: an eventfd rung only while the thread sleeps.
final class Waker: Sendable {
    let doorbell = EventFD()
    /// Set (sequentially consistent) by the thread before its last look at the work
    /// queue; read by appenders under the work queue's lock after they append: either
    /// the thread sees the item, or the appender sees it sleeping and rings.
    let sleeping = Atomic<Bool>(false)
    func ring() { doorbell.signal() }
}

/// Work waiting for a ring, shared by a device's queues: callers append, queue threads
/// take. What a stopped queue had in flight goes back to the front, so it is re-issued
/// first after a reconnect.
final class WorkQueue: Sendable {
    private struct State {
        var items: Deque<WorkItem> = []
        var wakers: [Waker] = []
        var next = 0
    }
    private let state = Locked(State())
    /// Items waiting, readable without the lock (a spinning thread's hint only). Every
    /// access is relaxed: it orders nothing; the items themselves are read under the lock.
    private let count = Atomic<Int>(0)

    func append(_ item: WorkItem) {
        let waker = state.withLock { s -> Waker? in
            s.items.append(item)
            count.store(s.items.count, ordering: .relaxed)
            return Self.sleeper(&s)
        }
        waker?.ring()
    }

    /// A sleeping thread to ring, in turn; nil if all are awake (they look before sleeping).
    private static func sleeper(_ s: inout State) -> Waker? {
        let n = s.wakers.count
        for k in 0..<n {
            let w = s.wakers[(s.next + k) % n]
            // Sequentially consistent: pairs with the thread's store before its last look.
            // An exchange, so of many appenders only the first rings a sleeping thread.
            if w.sleeping.exchange(false, ordering: .sequentiallyConsistent) {
                s.next = (s.next + k + 1) % n
                return w
            }
        }
        return nil
    }

    func requeueAtFront(_ returned: [WorkItem]) {
        guard !returned.isEmpty else { return }
        state.withLock { s in
            s.items.insert(contentsOf: returned, at: 0)
            count.store(s.items.count, ordering: .relaxed)
        }
        wakeAll()
    }

    func take() -> WorkItem? {
        state.withLock { s in
            defer { count.store(s.items.count, ordering: .relaxed) }
            return s.items.popFirst()
        }
    }

    func putBack(_ item: WorkItem) {
        state.withLock { s in
            s.items.prepend(item)
            count.store(s.items.count, ordering: .relaxed)
        }
    }

    var isEmpty: Bool { state.withLock { $0.items.isEmpty } }

    /// A lock-free hint for spinning: true if something may be waiting.
    var mayHaveWork: Bool { count.load(ordering: .relaxed) > 0 }

    /// Everything still waiting (on shutdown).
    func drain() -> [WorkItem] {
        state.withLock { s in
            defer {
                s.items.removeAll()
                count.store(0, ordering: .relaxed)
            }
            return Array(s.items)
        }
    }

    func register(_ w: Waker) { state.withLock { $0.wakers.append(w) } }
    func unregister(_ w: Waker) { state.withLock { $0.wakers.removeAll { $0 === w } } }

    func wakeAll() {
        for w in state.withLock({ $0.wakers }) { w.ring() }
    }
}

/// Counters of one frontend queue (written by its thread, read by anyone). Every access
/// is relaxed: counters are statistics, never synchronisation.
public final class BlockFrontCounters: Sendable {
    /// Ring requests published (one caller operation may take several).
    public let requests = DriverCounter(0)
    /// Responses taken off the ring.
    public let responses = DriverCounter(0)
    /// Responses naming no request in flight (a hostile or broken backend).
    public let bogusResponses = DriverCounter(0)
    /// Notifications sent on the event channel to the backend.
    public let notifies = DriverCounter(0)
    /// Times the queue thread slept on its descriptors.
    public let sleeps = DriverCounter(0)
    /// When the connection's first response was taken (`CLOCK_MONOTONIC` ns; 0: none
    /// yet): after a migration, when the destination's backend first answered.
    public let firstResponseAt = DriverCounter(0)
    /// Counters all at zero.
    public init() {}
}

/// One request in flight on the ring.
private struct FrontInflight {
    var item: WorkItem?
    var pageCount = 0
}

/// One blkfront queue: a thread that owns a ring, takes work from the device's queue,
/// splits it into requests of at most `maxSegments` pages (indirect beyond 11), copies
/// written data into pool pages shared once, and on each response copies read data
/// out and answers the caller's operation. It also runs the jobs of tasks that prefer
/// the device's ``BlockFrontExecutor``: their requests then reach the ring, and their
/// answers reach them, without a wake-up; and, the device's first queue, it takes the
/// inputs a server registered (``BlockFrontend/serveInput(_:descriptor:)``) in its turns.
final class BlockFrontQueue: DriverService, @unchecked Sendable {
    // @unchecked: the ring and the tables belong to the queue thread once started.
    // @exclusivity(unchecked) on what that thread alone mutates: no two accesses can overlap,
    // and the runtime's checks on them took a tenth of the block path's CPU at queue depth 1
    // (README, issue 17's section).
    @exclusivity(unchecked) private var ring: FrontRing<blkif_request, blkif_response>
    let resources: BlockFrontQueueResources
    private let work: WorkQueue
    private let maxSegments: Int
    private let counters: BlockFrontCounters
    @exclusivity(unchecked) private var inflight: [FrontInflight]
    @exclusivity(unchecked) private var freeIDs: [Int]
    @exclusivity(unchecked) private var freePages: [Int32]
    private let slotPages: UnsafeMutablePointer<Int32>
    private let segmentScratch: UnsafeMutablePointer<BlockSegment>
    private let waker = Waker()
    private let doorbell: Doorbell
    private let executor: BlockFrontExecutor
    /// Inputs this thread serves (the device's first queue only).
    private let inputs: BlockFrontInputs?
    /// Jobs of tasks that prefer this thread; `stopped` once it no longer runs them.
    private let jobs = Locked<(items: [UnownedJob], stopped: Bool)>(([], false))
    /// Jobs waiting, readable without the lock (a spinning thread's hint only, relaxed).
    private let jobCount = Atomic<Int>(0)
    /// The batch being run, swapped with `jobs.items` so neither reallocates.
    @exclusivity(unchecked) private var running: [UnownedJob] = []
    private let runtime: DriverRuntime
    /// What was in flight when the thread stopped, for re-issue.
    private let returned = Locked<[WorkItem]>([])
    /// Asked to put nothing more on the ring (a suspend), until cleared.
    private let pauseWanted = Atomic<Bool>(false)
    /// Set by the thread once it saw `pauseWanted` between two turns: from then on it
    /// touches neither the ring nor the pool.
    private let pauseSeen = Atomic<Bool>(false)
    /// The thread's copy of `pauseWanted`, read once a turn.
    @exclusivity(unchecked) private var paused = false

    /// `maxIndirectSegments`: what the backend advertised (0 or at most 11: direct only).
    init(resources: BlockFrontQueueResources, work: WorkQueue, maxIndirectSegments: Int,
         counters: BlockFrontCounters, executor: BlockFrontExecutor, inputs: BlockFrontInputs? = nil) throws(RingError) {
        ring = try FrontRing(attachingTo: resources.ring.memory, at: RingIndex(0))
        self.resources = resources
        self.work = work
        self.counters = counters
        let size = Int(ring.size)
        // One indirect page holds 512 segments; the pool must hold the largest request twice.
        var segs = BlockDeviceLimits.maxDirectSegments
        if maxIndirectSegments > segs {
            segs = min(maxIndirectSegments, BlockDeviceLimits.segmentsPerIndirectPage, resources.pool.memory.count / 2)
        }
        maxSegments = max(segs, BlockDeviceLimits.maxDirectSegments)
        precondition(resources.pool.memory.count >= maxSegments, "pool smaller than one request")
        inflight = Array(repeating: FrontInflight(), count: size)
        freeIDs = Array((0..<size).reversed())
        freePages = Array((0..<Int32(resources.pool.memory.count)).reversed())
        slotPages = .allocate(capacity: size * maxSegments)
        segmentScratch = .allocate(capacity: maxSegments)
        segmentScratch.initialize(repeating: BlockSegment(gref: GrantRef(0), firstSector: 0, lastSector: 0), count: maxSegments)
        runtime = DriverRuntime(sleeps: counters.sleeps)
        doorbell = Doorbell(events: resources.events, port: resources.port, notifies: counters.notifies)
        self.executor = executor
        self.inputs = inputs
        jobs.withLock { $0.items.reserveCapacity(size) }
        running.reserveCapacity(size)
    }

    deinit {
        slotPages.deallocate()
        segmentScratch.deallocate()
    }

    /// Bytes one ring request carries at most.
    var maxRequestBytes: UInt64 { UInt64(maxSegments * XenPage.size) }

    func start() {
        work.register(waker)
        runtime.start(name: "blkfront \(resources.port.rawValue)", service: self, events: resources.events,
                      extraDescriptors: [waker.doorbell.descriptor] + (inputs.map { [$0.descriptor] } ?? []))
    }

    /// Stops the thread and waits until it has exited; returns the work that had no
    /// response, for re-issue. Blocks: async callers use ``stopped()``.
    func stop() -> [WorkItem] {
        work.unregister(waker)
        return unanswered(after: runtime.stop())
    }

    /// ``stop()`` without holding a thread of the cooperative pool while it waits.
    func stopped() async -> [WorkItem] {
        work.unregister(waker)
        return unanswered(after: await runtime.stopped())
    }

    private func unanswered(after exited: borrowing ThreadExited) -> [WorkItem] {
        returned.withLock { r in defer { r = [] }; return r }
    }

    var failure: (any Error)? { runtime.failure }

    /// Asks the thread to leave the ring alone, neither putting requests on it nor taking
    /// responses (what it has in flight stays in flight); ``isPaused`` says when it does.
    func pause() {
        // releasing/acquiring: pairs with the thread's load; nothing else is published.
        pauseWanted.store(true, ordering: .releasing)
        waker.ring()
    }

    /// Lets the thread issue again on the same ring.
    func unpause() {
        pauseWanted.store(false, ordering: .releasing)
        waker.ring()
    }

    /// True once the thread has seen the pause (or is gone): no request is being written.
    var isPaused: Bool {
        pauseSeen.load(ordering: .acquiring) || runtime.state != .running
    }

    /// Queues a job for this thread; false once the thread stopped (run it elsewhere).
    func enqueue(_ job: UnownedJob) -> Bool {
        let taken = jobs.withLock { j in
            if j.stopped { return false }
            j.items.append(job)
            jobCount.store(j.items.count, ordering: .relaxed)
            return true
        }
        // Sequentially consistent: pairs with the thread's store before its last look.
        if taken, waker.sleeping.exchange(false, ordering: .sequentiallyConsistent) { waker.ring() }
        return taken
    }

    /// Runs the jobs queued so far; true if there were any. Their requests go to the
    /// work queue and are issued by the caller of this, in one batch.
    private func runJobs() -> Bool {
        guard jobCount.load(ordering: .relaxed) > 0 else { return false }
        jobs.withLock { j in
            swap(&j.items, &running)
            jobCount.store(0, ordering: .relaxed)
        }
        let on = executor.asUnownedTaskExecutor()
        for job in running { job.runSynchronously(on: on) }
        running.removeAll(keepingCapacity: true)
        return true
    }

    /// Hands the jobs still queued to the global executor, and every later one too.
    private func stopRunningJobs() {
        let left = jobs.withLock { j in
            j.stopped = true
            jobCount.store(0, ordering: .relaxed)
            defer { j.items = [] }
            return j.items
        }
        for job in left { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }

    // MARK: the queue thread (DriverService)

    func serviceTurn() throws -> Bool {
        notePause()
        // Paused, the ring is left as it is (a suspended guest runs no driver): only the
        // jobs of tasks preferring this thread run, and their requests wait; so do the
        // inputs' (an input left readable would turn the thread's sleep into a spin).
        if paused {
            let took = inputs?.serve() ?? false
            return runJobs() || took
        }
        // Responses resume jobs here, whose requests go out with the rest and the inputs'
        // in one push.
        var worked = try collectResponses()
        worked = runJobs() || worked
        worked = (inputs?.serve() ?? false) || worked
        return try issue() || worked
    }

    /// See ``BlockPolling``.
    var spinning: SpinPolicy.Settings? {
        SpinPolicy.Settings(limit: BlockPolling.limit, wakeUpWorth: BlockPolling.wakeUpWorth,
                            sharedWorth: BlockPolling.frontendAnswersWorth)
    }

    /// Notifications sent to the peer (the counter `xenpv top` shows).
    var notificationsSent: UInt64? { counters.notifies.value }

    /// Requests on the ring: their responses are what the thread waits for.
    var inFlight: Int { Int(ring.outstandingRequests) }

    /// Takes up a pause asked for (or its end) between two turns: the safe point.
    private func notePause() {
        let wanted = pauseWanted.load(ordering: .acquiring)
        guard wanted != paused else { return }
        paused = wanted
        // releasing: every request written before is published to whoever sees the pause.
        pauseSeen.store(wanted, ordering: .releasing)
    }

    func workArrived() throws -> Bool {
        if pauseWanted.load(ordering: .relaxed) != paused { return true }
        if paused { return jobCount.load(ordering: .relaxed) > 0 || inputs?.anyReady == true }
        if ring.outstandingRequests > 0, try ring.checkForResponses() > 0 { return true }
        return (canIssue && work.mayHaveWork) || jobCount.load(ordering: .relaxed) > 0 || inputs?.anyReady == true
    }

    func prepareToSleep(_ poll: PollSet) throws -> Bool {
        if pauseWanted.load(ordering: .relaxed) != paused { return true }
        if !paused, ring.outstandingRequests > 0, try ring.finalCheckForResponses() { return true }
        // Say we sleep, then look once more (see Waker.sleeping).
        // Sequentially consistent: may not move after the look below (store-load).
        waker.sleeping.store(true, ordering: .sequentiallyConsistent)
        if (canIssue && !work.isEmpty) || jobs.withLock({ !$0.items.isEmpty }) {
            // Relaxed: clearing only saves a later appender a needless doorbell.
            waker.sleeping.store(false, ordering: .relaxed)
            return true
        }
        return false
    }

    func didWake(_ poll: PollSet) {
        // Relaxed: as above; a doorbell that comes anyway is drained by the next sleep.
        waker.sleeping.store(false, ordering: .relaxed)
        if poll.fired(extra: 0) { waker.doorbell.drain() }
        if let inputs, poll.fired(extra: 1) { inputs.woke() }
    }

    func finish(failure: (any Error)?) {
        stopRunningJobs()
        // Everything without a response goes back for the next connection.
        var unanswered: [WorkItem] = []
        for i in inflight.indices {
            if let item = inflight[i].item { unanswered.append(item) }
            inflight[i] = FrontInflight()
        }
        returned.withLock { $0 = unanswered }
    }

    /// Room for another request; a request that needs more pool pages than are free sets
    /// `waitingForPages` until a response returns some.
    private var canIssue: Bool { !paused && !freeIDs.isEmpty && !ring.isFull && !waitingForPages }
    @exclusivity(unchecked) private var waitingForPages = false

    // MARK: issuing

    /// Sends requests while the ring, ids and pool pages last; true if any was sent.
    private func issue() throws -> Bool {
        var sent = false
        taking: while canIssue, var item = work.take() {
            let chunk: WorkItem
            switch item.io.kind {
            case .read, .write:
                let end = min(item.end, item.start + maxRequestBytes)
                let pages = Int((end - item.start + UInt64(XenPage.size) - 1) / UInt64(XenPage.size))
                if pages > freePages.count {
                    work.putBack(item)
                    waitingForPages = true
                    break taking
                }
                chunk = WorkItem(io: item.io, start: item.start, end: end)
                if end < item.end {
                    item.start = end
                    work.putBack(item)
                }
            case .flush, .discard:
                chunk = item
            }
            send(chunk)
            sent = true
        }
        if sent, ring.pushRequests() { try doorbell.ring() }
        return sent
    }

    private func send(_ chunk: WorkItem) {
        let id = freeIDs.removeLast()
        let io = chunk.io
        var request: BlockRequest
        switch io.kind {
        case .flush:
            request = BlockRequest(id: UInt64(id), operation: .flush(sector: 0, segments: BlockSegments()))
        case .discard:
            request = BlockRequest(id: UInt64(id), operation: .discard(sector: io.offset / 512, count: io.length / 512, secure: false))
        case .read, .write:
            let bytes = Int(chunk.end - chunk.start)
            let pages = (bytes + XenPage.size - 1) / XenPage.size
            let sector = (io.offset + chunk.start) / 512
            let base = id * maxSegments
            for p in 0..<pages {
                let page = freePages.removeLast()
                slotPages[base + p] = page
                let length = min(XenPage.size, bytes - p * XenPage.size)
                if io.kind == .write {
                    resources.pool.memory.page(Int(page)).copyMemory(
                        from: io.buffer! + Int(chunk.start) + p * XenPage.size, byteCount: length)
                }
                segmentScratch[p] = BlockSegment(gref: resources.pool.refs[Int(page)], firstSector: 0,
                                                 lastSector: UInt8(length / 512 - 1))
            }
            inflight[id].pageCount = pages
            let op: BlkifOperation = io.kind == .read ? .read : .write
            if pages <= BlockDeviceLimits.maxDirectSegments {
                var segments = BlockSegments()
                for p in 0..<pages { segments.append(segmentScratch[p]) }
                request = BlockRequest(id: UInt64(id), operation: op == .read ? .read(sector: sector, segments: segments)
                                                                            : .write(sector: sector, segments: segments))
            } else {
                IndirectRequest.writeSegments(UnsafeBufferPointer(start: segmentScratch, count: pages), toPage: 0,
                                              at: resources.indirect.memory.page(id))
                // Built from the C struct: IndirectRequest's public initialiser takes an
                // array, an allocation per request on this thread.
                let slot = Self.indirectSlot(id: UInt64(id), operation: op, sector: sector, segments: pages,
                                             page: resources.indirect.refs[id])
                inflight[id].item = chunk
                ring.withNextRequestSlot { $0.pointee = slot }
                counters.requests.bump()
                return
            }
        }
        inflight[id].item = chunk
        ring.withNextRequestSlot { slot in request.write(toSlot: UnsafeMutableRawPointer(slot)) }
        counters.requests.bump()
    }

    /// A `BLKIF_OP_INDIRECT` slot with one page of segments, from a zeroed slot so no
    /// stale byte reaches the backend.
    static func indirectSlot(id: UInt64, operation: BlkifOperation, sector: UInt64, segments: Int, page: GrantRef) -> blkif_request {
        var slot = blkif_request()
        var indirect = blkif_request_indirect()
        indirect.operation = BlkifOperation.indirect.rawValue
        indirect.indirect_op = operation.rawValue
        indirect.nr_segments = UInt16(segments)
        indirect.id = id
        indirect.sector_number = sector
        indirect.handle = 0
        indirect.indirect_grefs.0 = page.rawValue
        withUnsafeMutableBytes(of: &slot) { $0.storeBytes(of: indirect, as: blkif_request_indirect.self) }
        return slot
    }

    // MARK: responses

    /// Walks a read's answered pool pages, adjacent ones as one piece: (offset into the
    /// operation, bytes in the pool).
    private func forEachPiece(id: Int, chunk: WorkItem, _ body: (Int, UnsafeRawBufferPointer) -> Void) {
        let bytes = Int(chunk.end - chunk.start)
        let base = id * maxSegments
        let pages = inflight[id].pageCount
        var p = 0
        while p < pages {
            var q = p + 1
            while q < pages && slotPages[base + q] == slotPages[base + q - 1] + 1 { q += 1 }
            let start = p * XenPage.size
            body(Int(chunk.start) + start, UnsafeRawBufferPointer(
                start: resources.pool.memory.page(Int(slotPages[base + p])), count: min(q * XenPage.size, bytes) - start))
            p = q
        }
    }

    /// Answers up to ``BlockPolling/frontendBatch`` responses; true if there were any.
    private func collectResponses() throws(RingError) -> Bool {
        guard try ring.checkForResponses() > 0 else { return false }
        if counters.firstResponseAt.value == 0 { counters.firstResponseAt.store(cxen_monotonic_ns(), ordering: .relaxed) }
        var taken = 0
        while taken < BlockPolling.frontendBatch, let raw = ring.nextResponse() {
            taken += 1
            counters.responses.bump()
            let response = BlockResponse(raw)
            let id = Int(truncatingIfNeeded: response.id)
            guard response.id < UInt64(inflight.count), let chunk = inflight[id].item else {
                counters.bogusResponses.bump()
                continue
            }
            let io = chunk.io
            var error: BlockFrontError?
            if response.status != .okay {
                error = BlockFrontError(status: response.status, operation: response.operation)
            } else if io.kind == .read {
                // In place to the consumer, or copied to the caller's buffer.
                forEachPiece(id: id, chunk: chunk) { offset, piece in
                    if let consume = io.consume {
                        consume(offset, piece)
                    } else {
                        (io.buffer! + offset).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
                    }
                }
            }
            let base = id * maxSegments
            // Last page first, so the next request takes the same pages in the same order:
            // blkback maps a request's new grants side by side and joins adjacent pages
            // into one storage buffer.
            for p in (0..<inflight[id].pageCount).reversed() { freePages.append(slotPages[base + p]) }
            waitingForPages = false
            inflight[id] = FrontInflight()
            freeIDs.append(id)
            let units = (io.kind == .read || io.kind == .write) ? chunk.end - chunk.start : 1
            io.answer(units: units, error: error)
        }
        return true
    }
}
