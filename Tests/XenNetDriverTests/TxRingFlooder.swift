import CXen
import Foundation
import Glibc
import XenABI
import XenLocks
import XenNetProtocol
import XenRing

/// A frontend that never lets the vif's tx ring go idle: on its own thread it refills
/// every free slot with a good 60-byte packet, takes every response and rings, until
/// told to stop. It keeps producing after the backend is gone (the ring is the guest's).
final class TxRingFlooder: @unchecked Sendable {
    // @unchecked: the rings are only used by the flooding thread; the rest is locked.
    private let f: NetFixture
    private var tx: FrontRing<netif_tx_request, netif_tx_response>
    private let stopping = Locked(false)
    private let done = DispatchSemaphore(value: 0)
    private let progress = Locked<(responses: Int, waiter: (count: Int, CheckedContinuation<Void, Never>)?)>((0, nil))

    /// Initialises both rings (rx with no buffers posted); start the backend after this.
    init(_ f: NetFixture) throws {
        self.f = f
        tx = try FrontRing(initializing: f.txRing.memory)
        var rx = try FrontRing<netif_rx_request, netif_rx_response>(initializing: f.rxRing.memory)
        _ = rx.pushRequests()
    }

    func start() {
        Thread { [self] in
            defer { done.signal() }
            let ref = f.txPool.refs[0].rawValue
            var id: UInt16 = 0
            while !stopping.withLock({ $0 }) {
                while !tx.isFull {
                    id = (id &+ 1) % 200
                    tx.produce(netif_tx_request(gref: ref, offset: 0, flags: 0, id: id, size: 60))
                }
                if tx.pushRequests() { try? f.feEvents.notify(f.fePort) }
                var answered = 0
                while (try? tx.checkForResponses()) ?? 0 > 0 {
                    while tx.nextResponse() != nil { answered += 1 }
                }
                while let p = try? f.feEvents.pending() { try? f.feEvents.unmask(p) }
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

    /// Returns once the backend answered `count` slots in all.
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
