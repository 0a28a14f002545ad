import CXen
import DequeModule
import Foundation
import Glibc
import Synchronization
import XenABI
import XenBlockProtocol
import XenHypervisor
import XenRing

/// Work waiting for a ring, shared by a device's queues: callers append, queue threads
/// take. What a stopped queue had in flight goes back to the front, so it is re-issued
/// first after a reconnect.
final class WorkQueue: Sendable {
    private let items = Mutex<Deque<WorkItem>>([])
    private let wakers = Mutex<(fds: [Int32], next: Int)>(([], 0))

    func append(_ item: WorkItem) {
        items.withLock { $0.append(item) }
        wakeOne()
    }

    func requeueAtFront(_ returned: [WorkItem]) {
        guard !returned.isEmpty else { return }
        items.withLock { q in q.insert(contentsOf: returned, at: 0) }
        wakeOne()
    }

    /// Takes the next item whose first request needs at most what `fits` allows.
    func take() -> WorkItem? { items.withLock { $0.popFirst() } }

    func putBack(_ item: WorkItem) { items.withLock { $0.prepend(item) } }

    var isEmpty: Bool { items.withLock { $0.isEmpty } }

    /// Everything still waiting (on shutdown).
    func drain() -> [WorkItem] { items.withLock { q in defer { q.removeAll() }; return Array(q) } }

    func register(_ fd: Int32) { wakers.withLock { $0.fds.append(fd) } }
    func unregister(_ fd: Int32) { wakers.withLock { $0.fds.removeAll { $0 == fd } } }

    /// Wakes the queue threads in turn.
    private func wakeOne() {
        let fd: Int32? = wakers.withLock { w in
            guard !w.fds.isEmpty else { return nil }
            w.next = (w.next + 1) % w.fds.count
            return w.fds[w.next]
        }
        if let fd {
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
    }

    func wakeAll() {
        for fd in wakers.withLock({ $0.fds }) {
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }
    }
}

/// Counters of one frontend queue (written by its thread, read relaxed by anyone).
public final class BlockFrontCounters: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let responses = Atomic<UInt64>(0)
    /// Responses naming no request in flight (a hostile or broken backend).
    public let bogusResponses = Atomic<UInt64>(0)
    public let notifies = Atomic<UInt64>(0)
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
/// out and answers the caller's operation.
final class BlockFrontQueue: @unchecked Sendable {
    // @unchecked: the ring and the tables belong to the queue thread once started.
    private var ring: FrontRing<blkif_request, blkif_response>
    let resources: BlockFrontQueueResources
    private let work: WorkQueue
    private let maxSegments: Int
    private let counters: BlockFrontCounters
    private var inflight: [FrontInflight]
    private var freeIDs: [Int]
    private var freePages: [Int32]
    private let slotPages: UnsafeMutablePointer<Int32>
    private let segmentScratch: UnsafeMutablePointer<BlockSegment>
    private let stopFD: Int32
    private let wakeFD: Int32
    private let finished = DispatchSemaphore(value: 0)
    private var started = false
    /// What was in flight when the thread stopped, for re-issue.
    private let returned = Mutex<[WorkItem]>([])
    private let failureBox = Mutex<RingError?>(nil)

    /// `maxIndirectSegments`: what the backend advertised (0 or at most 11: direct only).
    init(resources: BlockFrontQueueResources, work: WorkQueue, maxIndirectSegments: Int,
         counters: BlockFrontCounters) throws(RingError) {
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
        stopFD = cxen_eventfd(0, 1)
        wakeFD = cxen_eventfd(0, 1)
    }

    deinit {
        slotPages.deallocate()
        segmentScratch.deallocate()
        close(stopFD)
        close(wakeFD)
    }

    /// Bytes one ring request carries at most.
    var maxRequestBytes: UInt64 { UInt64(maxSegments * XenPage.size) }

    func start() {
        precondition(!started)
        started = true
        work.register(wakeFD)
        let thread = Thread { [self] in
            run()
            finished.signal()
        }
        thread.name = "blkfront port \(resources.port)"
        thread.start()
    }

    /// Stops the thread (bounded); returns the work that had no response, for re-issue.
    func stop(timeout: Double = 5) -> (stopped: Bool, unanswered: [WorkItem]) {
        guard started else { return (true, []) }
        work.unregister(wakeFD)
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
        let stopped = finished.wait(timeout: .now() + timeout) == .success
        if stopped { finished.signal() }
        return (stopped, returned.withLock { r in defer { r = [] }; return r })
    }

    var failure: RingError? { failureBox.withLock { $0 } }

    // MARK: the queue thread

    private func run() {
        do throws(RingError) {
            while true {
                var worked = try collectResponses()
                worked = issue() || worked
                if worked { continue }
                if ring.outstandingRequests > 0, try ring.finalCheckForResponses() { continue }
                if canIssue, !work.isEmpty { continue }
                if !sleep() { break }
            }
        } catch {
            failureBox.withLock { $0 = error }
        }
        // Everything without a response goes back for the next connection.
        var unanswered: [WorkItem] = []
        for i in inflight.indices {
            if let item = inflight[i].item { unanswered.append(item) }
            inflight[i] = FrontInflight()
        }
        returned.withLock { $0 = unanswered }
    }

    private var canIssue: Bool { !freeIDs.isEmpty && !ring.isFull && freePages.count >= maxSegments }

    private func sleep() -> Bool {
        var fds = (pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: resources.events.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0))
        _ = withUnsafeMutableBytes(of: &fds) { raw in
            poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), 3, 1000)
        }
        if fds.0.revents != 0 { return false }
        if fds.1.revents != 0 {
            var value: UInt64 = 0
            _ = read(wakeFD, &value, 8)
        }
        while let port = try? resources.events.pending() { try? resources.events.unmask(port) }
        return true
    }

    // MARK: issuing

    /// Sends requests while the ring, ids and pool pages last; true if any was sent.
    private func issue() -> Bool {
        var sent = false
        while canIssue, var item = work.take() {
            let chunk: WorkItem
            switch item.io.kind {
            case .read, .write:
                let end = min(item.end, item.start + maxRequestBytes)
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
        if sent, ring.pushRequests() {
            try? resources.events.notify(resources.port)
            counters.notifies.add(1, ordering: .relaxed)
        }
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
                request = BlockRequest(id: UInt64(id), operation: .indirect(IndirectRequest(
                    operation: op, sector: sector, segmentCount: pages, pages: [resources.indirect.refs[id]])))
            }
        }
        inflight[id].item = chunk
        ring.withNextRequestSlot { slot in request.write(toSlot: UnsafeMutableRawPointer(slot)) }
        counters.requests.add(1, ordering: .relaxed)
    }

    // MARK: responses

    private func collectResponses() throws(RingError) -> Bool {
        guard try ring.checkForResponses() > 0 else { return false }
        while let raw = ring.nextResponse() {
            counters.responses.add(1, ordering: .relaxed)
            let response = BlockResponse(raw)
            let id = Int(truncatingIfNeeded: response.id)
            guard response.id < UInt64(inflight.count), let chunk = inflight[id].item else {
                counters.bogusResponses.add(1, ordering: .relaxed)
                continue
            }
            let io = chunk.io
            var error: BlockFrontError?
            if response.status != .okay {
                error = BlockFrontError(status: response.status, operation: response.operation)
            } else if io.kind == .read {
                let bytes = Int(chunk.end - chunk.start)
                let base = id * maxSegments
                for p in 0..<inflight[id].pageCount {
                    let length = min(XenPage.size, bytes - p * XenPage.size)
                    (io.buffer! + Int(chunk.start) + p * XenPage.size).copyMemory(
                        from: resources.pool.memory.page(Int(slotPages[base + p])), byteCount: length)
                }
            }
            let base = id * maxSegments
            for p in 0..<inflight[id].pageCount { freePages.append(slotPages[base + p]) }
            inflight[id] = FrontInflight()
            freeIDs.append(id)
            let units = (io.kind == .read || io.kind == .write) ? chunk.end - chunk.start : 1
            io.answer(units: units, error: error)
        }
        return true
    }
}
