import CXen
import Foundation
import Glibc
import XenABI
import XenBlockFront
import XenBlockProtocol
import XenHypervisor
import XenLocks
import XenRing

/// A frontend that never lets blkback's ring go idle: on its own thread it refills every
/// free slot with a one-page read, takes every response and rings, until told to stop.
/// It keeps producing after the backend is gone (the ring is the guest's memory).
final class RingFlooder: @unchecked Sendable {
    // @unchecked: `resources` are only used by the flooding thread; the rest is locked.
    private let resources: BlockFrontQueueResources
    private let stopping = Locked(false)
    private let done = DispatchSemaphore(value: 0)
    private let progress = Locked<(responses: Int, waiter: (count: Int, CheckedContinuation<Void, Never>)?)>((0, nil))

    init(_ resources: BlockFrontQueueResources) { self.resources = resources }

    func start() {
        Thread { [self] in
            defer { done.signal() }
            guard var ring = try? FrontRing<blkif_request, blkif_response>(
                attachingTo: resources.ring.memory,
                at: RingIndex(SharedRingHeader(resources.ring.memory.base).requestProducer.load(ordering: .relaxed)))
            else { return }
            var id: UInt64 = 0
            let page = resources.pool.refs[0]
            while !stopping.withLock({ $0 }) {
                while !ring.isFull {
                    id &+= 1
                    let slot = rawRequest(.read, id: id, sector: 0, grefs: [page])
                    ring.withNextRequestSlot { $0.pointee = slot }
                }
                if ring.pushRequests() { try? resources.events.notify(resources.port) }
                var answered = 0
                while (try? ring.checkForResponses()) ?? 0 > 0 {
                    while ring.nextResponse() != nil { answered += 1 }
                }
                while let p = try? resources.events.pending() { try? resources.events.unmask(p) }
                if answered == 0 { sched_yield() }
                let ready = progress.withLock { p -> CheckedContinuation<Void, Never>? in
                    p.responses += answered
                    guard let (count, c) = p.waiter, p.responses >= count else { return nil }
                    p.waiter = nil
                    return c
                }
                ready?.resume()
            }
        }.start()
    }

    /// Returns once the backend answered `count` requests in all.
    func answered(_ count: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = progress.withLock { p -> Bool in
                if p.responses >= count { return true }
                p.waiter = (count, c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Stops flooding and waits for the thread to end.
    func stop() async {
        stopping.withLock { $0 = true }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async { [done] in
                done.wait()
                c.resume()
            }
        }
    }
}
