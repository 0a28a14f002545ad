import CXen
import Glibc
import XenABI
import XenBlockProtocol
import XenBlockStorage
import XenDriverRuntime
import XenHypervisor
import XenLocks
import XenRing

/// One blkback queue: a thread that serves one frontend ring against one storage engine.
///
/// Each request is copied off the ring once, decoded and validated against the device
/// limits; a refused one is answered at once (`BLKIF_RSP_ERROR`, or
/// `BLKIF_RSP_EOPNOTSUPP` for an operation not offered). The batch drained from the ring
/// goes to the engine in one submit; completions come back through the engine's
/// completion descriptor, polled together with the event channel and a stop descriptor
/// (see `BlockPolling` for when the thread polls instead). A ring-protocol violation
/// stops this queue only. Buffers are allocated once: the data path does not allocate.
///
/// How data moves (costs in the README's "Block devices" section, measured with
/// `xenpv bench block --grant-paths` and `--grant-copy`):
/// - With `feature-persistent` negotiated (``BlockQueueConfiguration/persistentGrants``),
///   segments are the frontend's pages kept mapped in `PersistentGrants`, and the
///   engine reads and writes them directly: no copy. A request's new grants are mapped
///   side by side in one call; a mapping is an `mmap`, so a frontend that reuses its
///   grants (ours shares its pool once) pays it once per page. Like Linux blkback, a
///   write goes to disk from the frontend's own page: a frontend that changes it
///   mid-write corrupts only its own data.
/// - Otherwise each segment is grant-copied through a page-aligned bounce page, which
///   `O_DIRECT` needs; mapping per request instead would cost an `mmap`, a `munmap` and
///   a TLB shootdown each time.
/// - A request of several pages goes through bounce pages even with persistent grants
///   when the engine prefers one contiguous buffer (``BlockQueueConfiguration/contiguousCopies``;
///   libaio with `O_DIRECT` does): the bounce pages lie on huge pages, so the disk gets
///   one scatter-gather element where the frontend's pages would give one per page. The
///   data is then copied between the bounce pages and the persistent mappings, a plain
///   memory copy several times cheaper than a grant copy; on a virtio disk without
///   indirect descriptors the single element saves more than the copy costs.
/// Segments whose data lie next to each other go to the engine as one buffer (iovec).
/// On a file the paths measure alike at 4 KiB (the device dominates); on the memory
/// engine at 128 KiB the mapped path is the faster one.
public final class BlockQueue: @unchecked Sendable {
    // @unchecked: the runner's state is touched only by its thread once started; what
    // the queue releases is behind `released`.
    private let runner: any BlockQueueRunning
    /// What the queue was told at connect time.
    public let configuration: BlockQueueConfiguration
    /// What the queue did so far; readable from any thread.
    public let counters: BlockQueueCounters
    private let ringMapping: GrantMapping
    private let events: any EventChannels
    private let mapper: any GrantMapper
    private let released = Locked(false)

    /// Attaches to the ring the frontend initialised on `ring` (mapped writable through
    /// `mapper`). From now on the queue owns `ring`, `events` (with
    /// `configuration.port` bound) and `storage`: it unmaps, unbinds and closes them when
    /// it stops, once its thread has exited (if this throws, the caller still owns them).
    /// `onFailure` is called from the queue thread when the frontend broke the ring
    /// protocol (or a handle failed) and the queue stopped by itself.
    public init(ring: GrantMapping, events: any EventChannels, mapper: any GrantMapper, storage: any StorageEngine,
                configuration: BlockQueueConfiguration, counters: BlockQueueCounters = BlockQueueCounters(),
                onFailure: (@Sendable (any Error) -> Void)? = nil) throws(RingError) {
        self.configuration = configuration
        self.counters = counters
        ringMapping = ring
        self.events = events
        self.mapper = mapper
        header = SharedRingHeader(ring.memory.base)
        switch configuration.abi {
        case .x86_64:
            runner = try BlockQueueRunner<blkif_request, blkif_response>(
                ring: ring.memory, events: events, mapper: mapper, storage: storage, configuration: configuration,
                counters: counters, onFailure: onFailure)
        case .x86_32:
            runner = try BlockQueueRunner<X86_32RequestSlot, X86_32ResponseSlot>(
                ring: ring.memory, events: events, mapper: mapper, storage: storage, configuration: configuration,
                counters: counters, onFailure: onFailure)
        }
    }

    /// The ring's shared header, read from other threads for display only.
    private let header: SharedRingHeader

    /// Requests the frontend published and this queue has not answered
    /// (`req_prod - rsp_prod`, relaxed loads): a figure for display; 0 once the queue has
    /// stopped. Read under the lock `release` takes before it unmaps the ring, so a
    /// statistics reader never touches the ring after it is gone.
    public var ringFill: Int {
        released.withLock { gone in
            gone ? 0 : Int(header.requestProducer.load(ordering: .relaxed) &- header.responseProducer.load(ordering: .relaxed))
        }
    }

    /// Starts the queue thread.
    public func start() { runner.start() }

    /// Stops the thread (after finishing and answering the operations already at the
    /// engine, bounded), waits until it has exited however busy the frontend keeps the
    /// ring, then releases the ring, the event channel and the engine. Blocks: async
    /// callers use ``stopped()``.
    public func stop() { release(runner.runtime.stop()) }

    /// ``stop()`` without holding a thread of the cooperative pool while it waits.
    public func stopped() async { release(await runner.runtime.stopped()) }

    private func release(_ exited: borrowing ThreadExited) {
        guard released.withLock({ r in defer { r = true }; return !r }) else { return }
        runner.release(exited)
        try? mapper.unmap(ringMapping)
        try? events.unbind(configuration.port)
        events.close()
    }

    /// Where the queue's thread is (`.joined` once it touches nothing any more).
    public var threadState: DriverRuntime.State { runner.runtime.state }

    /// Why the queue stopped by itself, if it did.
    public var failure: (any Error)? { runner.runtime.failure }

    /// Entries in the ring.
    public var ringSize: Int { runner.ringSize }
}

protocol BlockQueueRunning: AnyObject, Sendable {
    func start()
    var runtime: DriverRuntime { get }
    /// Gives back what the thread would have, had it run (the engine).
    func release(_ exited: borrowing ThreadExited)
    var ringSize: Int { get }
}

/// One request at the engine.
private struct Inflight {
    var id: UInt64 = 0
    var operation = BlkifOperation.read
    var isRead = false
    /// Segments holding pages (persistent-grant runs and/or bounce pages; see
    /// ``BlockQueueRunner/bounces(_:)``); 0 until the data is prepared.
    var segmentCount = 0
}

final class BlockQueueRunner<Request: BitwiseCopyable, Response: BitwiseCopyable>: BlockQueueRunning, DriverService,
    @unchecked Sendable {
    // @unchecked: everything but `runtime` belongs to the queue thread once started.
    // @exclusivity(unchecked) on what that thread alone mutates, as in BlockFrontQueue.
    @exclusivity(unchecked) private var ring: BackRing<Request, Response>
    private let events: any EventChannels
    private let mapper: any GrantMapper
    private let storage: any StorageEngine
    private let configuration: BlockQueueConfiguration
    private let counters: BlockQueueCounters
    private let onFailure: (@Sendable (any Error) -> Void)?

    private let abi: BlkifABI
    private let limits: BlockDeviceLimits
    private let sectorSize: Int
    /// Segments one request may carry: 11, or the advertised indirect maximum.
    private let maxSegments: Int
    let ringSize: Int

    private let bounce: BouncePool
    private let bouncePools: BouncePools?
    /// The engine's registration of the bounce pages (``StorageEngine/registerBuffer(_:)``).
    private let bounceRegistration: Int?
    private let pool: UnsafeMutableRawPointer
    private let freePages: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var freePageCount: Int
    private let slots: UnsafeMutablePointer<Inflight>
    private let freeSlots: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var freeSlotCount: Int
    /// Per segment of a slot: its bounce page; its page's persistent-grant run, and the
    /// page's address.
    private let slotPages: UnsafeMutablePointer<Int32>
    private let slotRuns: UnsafeMutablePointer<Int32>
    private let slotMapped: UnsafeMutablePointer<UnsafeMutableRawPointer>
    private let slotSegments: UnsafeMutablePointer<BlockSegment>
    /// Per slot, the engine's buffers: adjacent segments share one.
    private let slotIOV: UnsafeMutablePointer<iovec>
    /// A request's grant references while it is prepared.
    private let segmentRefs: UnsafeMutablePointer<GrantRef>
    private let copies: UnsafeMutablePointer<GrantCopySegment>
    private let indirectPages: UnsafeMutableRawPointer
    private let pending: UnsafeMutablePointer<StorageOperation>
    @exclusivity(unchecked) private var pendingHead = 0
    @exclusivity(unchecked) private var pendingCount = 0
    private let completions: UnsafeMutablePointer<StorageCompletion>
    /// Set when `feature-persistent` was negotiated: data goes to and from these mappings.
    private let persistent: PersistentGrants?
    /// Requests of several pages are copied through the (contiguous) bounce pages even
    /// with persistent grants: the engine prefers one contiguous buffer.
    private let gathers: Bool
    /// A request taken off the ring that waits for bounce pages or room among the
    /// persistent grants (a private copy).
    @exclusivity(unchecked) private var stalled: Request?
    /// The persistent grants had no room for the stalled request: retry after a completion.
    @exclusivity(unchecked) private var waitingForRoom = false
    /// The slot of a write barrier at the engine: later requests wait for its completion
    /// (an engine may run the flush alongside later operations, as io_uring does).
    @exclusivity(unchecked) private var barrierSlot: Int?
    @exclusivity(unchecked) private var produced = false

    let runtime: DriverRuntime
    private let doorbell: Doorbell

    init(ring pages: MappedPages, events: any EventChannels, mapper: any GrantMapper, storage: any StorageEngine,
         configuration: BlockQueueConfiguration, counters: BlockQueueCounters,
         onFailure: (@Sendable (any Error) -> Void)?) throws(RingError) {
        ring = try BackRing(attachingTo: pages)
        self.events = events
        self.mapper = mapper
        self.storage = storage
        self.configuration = configuration
        self.counters = counters
        self.onFailure = onFailure
        runtime = DriverRuntime(sleeps: counters.sleeps)
        doorbell = Doorbell(events: events, port: configuration.port, notifies: counters.notifies)
        abi = configuration.abi
        limits = configuration.limits
        sectorSize = Int(configuration.limits.sectorSize)
        maxSegments = max(BlockDeviceLimits.maxDirectSegments, configuration.limits.maxIndirectSegments)
        precondition(maxSegments <= StorageOperation.maxBuffers, "more segments than one preadv takes")
        ringSize = Int(ring.size)

        let pages = configuration.bouncePages
        if let pools = configuration.bouncePools {
            let (pool, kept) = pools.take(pages: pages)
            bounce = pool
            if kept { counters.warmBouncePool.bump() }
        } else {
            bounce = BouncePool(pages: pages)
        }
        bouncePools = configuration.bouncePools
        pool = bounce.base
        freePages = .allocate(capacity: pages)
        for i in 0..<pages { freePages[i] = Int32(pages - 1 - i) }
        freePageCount = pages
        slots = .allocate(capacity: ringSize)
        slots.initialize(repeating: Inflight(), count: ringSize)
        freeSlots = .allocate(capacity: ringSize)
        for i in 0..<ringSize { freeSlots[i] = Int32(ringSize - 1 - i) }
        freeSlotCount = ringSize
        slotPages = .allocate(capacity: ringSize * maxSegments)
        slotRuns = .allocate(capacity: ringSize * maxSegments)
        slotMapped = .allocate(capacity: ringSize * maxSegments)
        slotMapped.initialize(repeating: pool, count: ringSize * maxSegments)
        slotSegments = .allocate(capacity: ringSize * maxSegments)
        slotSegments.initialize(repeating: BlockSegment(gref: GrantRef(0), firstSector: 0, lastSector: 0),
                                count: ringSize * maxSegments)
        slotIOV = .allocate(capacity: ringSize * maxSegments)
        slotIOV.initialize(repeating: iovec(), count: ringSize * maxSegments)
        segmentRefs = .allocate(capacity: maxSegments)
        segmentRefs.initialize(repeating: GrantRef(0), count: maxSegments)
        copies = .allocate(capacity: max(maxSegments, BlockDeviceLimits.maxIndirectPages))
        copies.initialize(
            repeating: GrantCopySegment(source: .local(pool), destination: .local(pool), length: 0),
            count: max(maxSegments, BlockDeviceLimits.maxIndirectPages))
        indirectPages = .allocate(byteCount: BlockDeviceLimits.maxIndirectPages * XenPage.size, alignment: XenPage.size)
        pending = .allocate(capacity: ringSize)
        pending.initialize(repeating: StorageOperation(kind: .flush, tag: 0), count: ringSize)
        completions = .allocate(capacity: ringSize)
        completions.initialize(repeating: .empty, count: ringSize)
        persistent = configuration.persistentGrants > 0
            ? PersistentGrants(capacity: max(configuration.persistentGrants, maxSegments), mapper: mapper,
                               storage: storage, domain: configuration.frontend, counters: counters)
            : nil
        gathers = configuration.contiguousCopies ?? storage.prefersContiguousBuffers
        bounceRegistration = storage.registerBuffer(UnsafeMutableRawBufferPointer(start: pool, count: pages * XenPage.size))
    }

    deinit {
        // The engine is closed (finish waits for what the kernel held): the pool is free,
        // and its registration gone with the engine's ring (this is for an engine left open).
        if let bounceRegistration { storage.unregisterBuffer(bounceRegistration) }
        bouncePools?.give(bounce)
        freePages.deallocate()
        slots.deallocate()
        freeSlots.deallocate()
        slotPages.deallocate()
        slotRuns.deallocate()
        slotMapped.deallocate()
        slotSegments.deallocate()
        slotIOV.deallocate()
        segmentRefs.deallocate()
        copies.deallocate()
        indirectPages.deallocate()
        pending.deallocate()
        completions.deallocate()
    }

    func start() {
        runtime.start(name: "blkback \(configuration.frontend.rawValue)/\(configuration.port.rawValue)", service: self,
                      events: events, extraDescriptors: [storage.completionDescriptor.rawValue], onFailure: onFailure)
    }

    func release(_ exited: borrowing ThreadExited) {
        // A thread that ran closed the engine itself (see finish).
        if runtime.state == .idle { storage.close() }
    }

    // MARK: the queue thread (DriverService)

    // The driver loop (another module) calls these through the protocol, which would run
    // the generic code and look up `BackRing<Request, Response>`'s metadata on every call,
    // spin turns included: each jumps to its specialisation for the native ABI instead.
    // The generic entry is a bare call, so that the jump is the first thing it does: with
    // the body inline, the compiler hoisted the metadata of a local (`Request?`) above the
    // jump, a runtime lookup on every call (3.6 % of blkback's samples in `workArrived`).
    @_specialize(where Request == blkif_request, Response == blkif_response)
    func serviceTurn() throws -> Bool { try turn() }

    @inline(never)
    private func turn() throws -> Bool {
        var worked = try serviceRing()
        try submitPending()
        worked = try reapCompletions() || worked
        try pushResponses()  // what taking requests answered at once (refusals)
        return worked
    }

    /// See ``BlockPolling``.
    var spinning: SpinPolicy.Settings? { SpinPolicy.Settings(limit: BlockPolling.limit, wakeUpWorth: BlockPolling.wakeUpWorth) }

    /// Notifications sent to the peer (the counter `xenpv top` shows).
    var notificationsSent: UInt64? { counters.notifies.value }

    /// Operations at the engine: their completions are what the thread waits for.
    var inFlight: Int { storage.outstanding }

    @_specialize(where Request == blkif_request, Response == blkif_response)
    func workArrived() throws -> Bool { try arrived() }

    @inline(never)
    private func arrived() throws -> Bool {
        if stalled == nil, try ring.checkForRequests() > 0 { return true }
        return storage.outstanding > 0 && storage.mayHaveCompletions
    }

    @_specialize(where Request == blkif_request, Response == blkif_response)
    func prepareToSleep(_ poll: PollSet) throws -> Bool { try beforeSleep(poll) }

    @inline(never)
    private func beforeSleep(_ poll: PollSet) throws -> Bool {
        // A stalled request is resumed by a completion, which wakes the poll.
        if stalled == nil, try ring.finalCheckForRequests() { return true }
        // A real reap resets the completion descriptor the sleep waits on.
        if try reapCompletions(beforeSleep: true) { return true }
        // The completion descriptor only while something is at the engine: a stale
        // wake-up would otherwise spin the poll.
        poll.watch(extra: 0, storage.outstanding > 0)
        return false
    }

    func finish(failure: (any Error)?) {
        // After a failure the ring is unusable: answer nothing more, release the engine.
        finishOutstanding(answer: failure == nil)
        storage.close()  // waits for what the kernel still holds: only then unmap
        persistent?.unmapAll()
    }

    private func pushResponses() throws {
        guard produced else { return }
        produced = false
        if ring.pushResponses() { try doorbell.ring() }
    }

    // MARK: requests

    /// Takes requests off the ring while bounce pages last; true if any was taken.
    private func serviceRing() throws(RingError) -> Bool {
        var took = false
        if let waiting = stalled {
            guard handle(waiting) else { return false }
            stalled = nil
            took = true
        }
        guard try ring.checkForRequests() > 0 else { return took }
        while let raw = ring.nextRequest() {
            counters.requests.bump()
            took = true
            if !handle(raw) {
                stalled = raw
                break
            }
        }
        return took
    }

    private func decode(_ raw: Request) -> Result<BlockRequest, BlockRequestError> {
        var copy = raw
        let abi = self.abi, limits = self.limits
        return withUnsafeBytes(of: &copy) { bytes in
            do throws(BlockRequestError) {
                return .success(try BlockRequest(copyingSlotAt: bytes.baseAddress!, abi: abi, limits: limits))
            } catch {
                return .failure(error)
            }
        }
    }

    /// Answers, queues for the engine, or (false) needs bounce pages that are in use.
    private func handle(_ raw: Request) -> Bool {
        let request: BlockRequest
        switch decode(raw) {
        case .success(let r): request = r
        case .failure(let error):
            counters.refused.bump()
            respond(error.response)
            return true
        }
        // BLKIF_OP_WRITE_BARRIER: every earlier request completes first, and nothing later
        // goes to the engine until the barrier has completed.
        if barrierSlot != nil { return false }
        if case .writeBarrier = request.operation, storage.outstanding > 0 || pendingCount > 0 { return false }
        let needed: Int
        switch request.operation {
        case .read(_, let segments), .write(_, let segments): needed = segments.count
        case .indirect(let indirect): needed = indirect.segmentCount
        case .flush(_, let segments), .writeBarrier(_, let segments): needed = segments.count
        case .discard: needed = 0
        }
        guard freeSlotCount > 0, !(persistent != nil && waitingForRoom), !bounces(needed) || freePageCount >= needed else {
            return false
        }
        freeSlotCount -= 1
        let slot = Int(freeSlots[freeSlotCount])
        slots[slot] = Inflight(id: request.id, operation: request.code, isRead: false, segmentCount: 0)

        let base = slot * maxSegments
        // A request with data: its segments are in slotSegments by the end of the switch.
        var data: (sector: UInt64, count: Int, isRead: Bool)?
        var operation = StorageOperation.flush(tag: UInt64(slot))  // flush and barrier without data
        switch request.operation {
        case .read(let sector, let segments), .write(let sector, let segments),
             .flush(let sector, let segments), .writeBarrier(let sector, let segments):
            guard !segments.isEmpty else { break }
            for i in 0..<segments.count { slotSegments[base + i] = segments[i] }
            data = (sector, segments.count, request.code == .read)
        case .indirect(let indirect):
            guard copyIndirect(request, indirect, slot: slot) else { return true }
            data = (indirect.sector, indirect.segmentCount, indirect.operation == .read)
        case .discard(let sector, let count, _):
            let (offset, o1) = sector.multipliedReportingOverflow(by: UInt64(sectorSize))
            let (length, o2) = count.multipliedReportingOverflow(by: UInt64(sectorSize))
            guard !o1 && !o2 else {
                finish(slot: slot, status: .error)
                return true
            }
            operation = .discard(tag: UInt64(slot), offset: offset, length: length)
        }
        if let data {
            switch prepareData(slot: slot, count: data.count, sector: data.sector, isRead: data.isRead) {
            case .ready(let op): operation = op
            case .answered: return true
            case .waiting: return putBack(slot: slot)
            }
        }
        pending[(pendingHead + pendingCount) % ringSize] = operation
        pendingCount += 1
        if case .writeBarrier = request.operation { barrierSlot = slot }
        return true
    }

    /// Copies the indirect request's segment pages in (once) and validates the segments.
    private func copyIndirect(_ request: BlockRequest, _ indirect: IndirectRequest, slot: Int) -> Bool {
        let segmentBytes = MemoryLayout<blkif_request_segment>.stride
        var remaining = indirect.segmentCount * segmentBytes
        for p in 0..<indirect.pageCount {
            let length = min(remaining, XenPage.size)
            remaining -= length
            copies[p] = GrantCopySegment(
                source: .foreign(domain: configuration.frontend, ref: indirect.page(p), offset: 0),
                destination: .local(indirectPages + p * XenPage.size), length: UInt16(length))
        }
        guard copyGrants(indirect.pageCount) else {
            finish(slot: slot, status: .error)
            return false
        }
        let out = UnsafeMutableBufferPointer(start: slotSegments + slot * maxSegments, count: indirect.segmentCount)
        let pages = UnsafeRawPointer(indirectPages)
        do {
            _ = try request.copyIndirectSegments(limits: limits, page: { pages + $0 * XenPage.size }, into: out)
        } catch {
            counters.refused.bump()
            finish(slot: slot, status: error.status)
            return false
        }
        return true
    }

    private enum Prepared {
        case ready(StorageOperation)
        /// Answered at once (a bad grant).
        case answered
        /// No room among the persistent grants until a completion.
        case waiting
    }

    /// Points the slot's iovecs at its segments' data: the frontend's pages kept mapped
    /// (persistent grants), or bounce pages with a write's data copied in (from the
    /// mapped pages, or by grant copy). Segments whose data lie next to each other share
    /// one iovec.
    private func prepareData(slot: Int, count: Int, sector: UInt64, isRead: Bool) -> Prepared {
        let base = slot * maxSegments
        let mapped = persistent != nil
        let bounced = bounces(count)
        slots[slot].isRead = isRead
        if let persistent {
            for i in 0..<count { segmentRefs[i] = slotSegments[base + i].gref }
            switch persistent.take(UnsafeBufferPointer(start: segmentRefs, count: count), runs: slotRuns + base,
                                   pages: slotMapped + base) {
            case .taken: break
            case .noRoom:
                waitingForRoom = true
                return .waiting
            case .badGrant:
                finish(slot: slot, status: .error)
                return .answered
            }
        }
        if bounced {
            for i in 0..<count {
                freePageCount -= 1
                slotPages[base + i] = freePages[freePageCount]
            }
            counters.bouncedSegments.bump(UInt64(count))
        }
        slots[slot].segmentCount = count
        var total = 0
        var buffers = 0
        for i in 0..<count {
            let s = slotSegments[base + i]
            let bytes = s.byteRange(sectorSize: sectorSize)
            let data = (bounced ? bouncePage(base + i) : slotMapped[base + i]) + bytes.lowerBound
            if buffers > 0, slotIOV[base + buffers - 1].iov_base! + slotIOV[base + buffers - 1].iov_len == data {
                slotIOV[base + buffers - 1].iov_len += bytes.count
            } else {
                slotIOV[base + buffers] = iovec(iov_base: data, iov_len: bytes.count)
                buffers += 1
            }
            if bounced, !isRead {
                if mapped {
                    data.copyMemory(from: slotMapped[base + i] + bytes.lowerBound, byteCount: bytes.count)
                } else {
                    copies[i] = GrantCopySegment(
                        source: .foreign(domain: configuration.frontend, ref: s.gref, offset: UInt16(bytes.lowerBound)),
                        destination: .local(data), length: UInt16(bytes.count))
                }
            }
            total += bytes.count
        }
        counters.segments.bump(UInt64(count))
        counters.buffers.bump(UInt64(buffers))
        counters.bytes.bump(UInt64(total))
        if bounced, !mapped, !isRead, !copyGrants(count) {
            finish(slot: slot, status: .error)
            return .answered
        }
        let offset = sector &* UInt64(sectorSize)  // in range: validated against the device size
        let iovecs = UnsafeMutableBufferPointer(start: slotIOV + base, count: buffers)
        return .ready(isRead ? .read(tag: UInt64(slot), offset: offset, buffers: iovecs)
                             : .write(tag: UInt64(slot), offset: offset, buffers: iovecs))
    }

    private func bouncePage(_ index: Int) -> UnsafeMutableRawPointer { pool + Int(slotPages[index]) * XenPage.size }

    /// Whether a request of `segments` goes through bounce pages: always without
    /// persistent grants; with them, when it has several pages and the engine does better
    /// with one contiguous buffer (the bounce pages are). With persistent grants every
    /// segment is also mapped (`slotRuns`, `slotMapped`).
    private func bounces(_ segments: Int) -> Bool { persistent == nil || (gathers && segments > 1) }

    /// Returns a slot taken for a request that must wait; false (the request stalls).
    private func putBack(slot: Int) -> Bool {
        freeSlots[freeSlotCount] = Int32(slot)
        freeSlotCount += 1
        return false
    }

    /// Runs the first `count` prepared copies; false if any segment failed.
    private func copyGrants(_ count: Int) -> Bool {
        do {
            try mapper.copy(UnsafeMutableBufferPointer(start: copies, count: count))
        } catch {
            counters.badGrants.bump()
            return false
        }
        for i in 0..<count where copies[i].status != .okay {
            counters.badGrants.bump()
            return false
        }
        return true
    }

    // MARK: the engine

    private func submitPending() throws(StorageError) {
        while pendingCount > 0 {
            // The pending queue is a ring; submit its contiguous run.
            let run = min(pendingCount, ringSize - pendingHead)
            let accepted = try storage.submit(UnsafeBufferPointer(start: pending + pendingHead, count: run))
            pendingHead = (pendingHead + accepted) % ringSize
            pendingCount -= accepted
            if accepted < run { return }
        }
    }

    /// Reaps a batch of completions and publishes their responses, before any later batch
    /// is reaped; while polling only if the engine says some may be there (no system call
    /// on libaio), and always `beforeSleep`.
    private func reapCompletions(beforeSleep: Bool = false) throws -> Bool {
        guard storage.outstanding > 0, beforeSleep || storage.mayHaveCompletions else { return false }
        // A batch at a time: their responses go out while the rest wait (see BlockPolling.backendBatch).
        let n = try storage.reap(into: UnsafeMutableBufferPointer(start: completions, count: min(ringSize, BlockPolling.backendBatch)),
                                 timeout: .zero)
        for i in 0..<n { complete(completions[i], answer: true) }
        try pushResponses()
        return n > 0
    }

    private func complete(_ completion: StorageCompletion, answer: Bool) {
        let slot = Int(completion.tag)
        if slot == barrierSlot { barrierSlot = nil }
        var status = BlkifStatus.okay
        switch completion.outcome {
        case .success:
            if slots[slot].isRead && bounces(slots[slot].segmentCount) && answer && !copyReadOut(slot: slot) { status = .error }
        case .failure(let error):
            counters.storageErrors.bump()
            status = error.code == .notSupported ? .notSupported : .error
        }
        if answer {
            finish(slot: slot, status: status)
        } else {
            release(slot: slot)
        }
    }

    /// Copies a read's data from its bounce pages to the frontend's pages; false if a
    /// grant copy failed.
    private func copyReadOut(slot: Int) -> Bool {
        let base = slot * maxSegments
        let count = slots[slot].segmentCount
        for i in 0..<count {
            let s = slotSegments[base + i]
            let bytes = s.byteRange(sectorSize: sectorSize)
            if persistent != nil {
                (slotMapped[base + i] + bytes.lowerBound).copyMemory(from: bouncePage(base + i) + bytes.lowerBound,
                                                                     byteCount: bytes.count)
                continue
            }
            copies[i] = GrantCopySegment(
                source: .local(bouncePage(base + i) + bytes.lowerBound),
                destination: .foreign(domain: configuration.frontend, ref: s.gref, offset: UInt16(bytes.lowerBound)),
                length: UInt16(bytes.count))
        }
        return persistent != nil || copyGrants(count)
    }

    // MARK: responses

    private func finish(slot: Int, status: BlkifStatus) {
        respond(BlockResponse(id: slots[slot].id, operation: slots[slot].operation, status: status))
        release(slot: slot)
    }

    private func release(slot: Int) {
        let base = slot * maxSegments
        // Last segment first: the next request then takes these pages in the same
        // order, adjacent ones again adjacent (one iovec).
        let count = slots[slot].segmentCount
        let bounced = bounces(count)
        for i in (0..<count).reversed() {
            persistent?.release(slotRuns[base + i])
            if bounced {
                freePages[freePageCount] = slotPages[base + i]
                freePageCount += 1
            }
        }
        if persistent != nil && count > 0 { waitingForRoom = false }
        slots[slot].segmentCount = 0
        freeSlots[freeSlotCount] = Int32(slot)
        freeSlotCount += 1
    }

    /// Writes the whole response slot from a zeroed value (XSA-216).
    private func respond(_ response: BlockResponse) {
        let abi = self.abi
        ring.withNextResponseSlot { slot in response.write(toSlot: UnsafeMutableRawPointer(slot), abi: abi) }
        counters.responses.bump()
        produced = true
    }

    /// Lets the engine finish what it holds (bounded); answers those requests only if
    /// the ring is still trustworthy.
    private func finishOutstanding(answer: Bool) {
        let deadline = ContinuousClock.now + .seconds(5)
        if !answer { pendingCount = 0 }
        while (pendingCount > 0 || storage.outstanding > 0) && ContinuousClock.now < deadline {
            do {
                try submitPending()
                let n = try storage.reap(into: UnsafeMutableBufferPointer(start: completions, count: ringSize),
                                         timeout: .milliseconds(10))
                for i in 0..<n { complete(completions[i], answer: answer) }
            } catch {
                break
            }
        }
        if answer { try? pushResponses() }
    }
}
