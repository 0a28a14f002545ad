import Dispatch
import Foundation
import TestSupport
import XenLocks

/// A hostile frontend's thread that never lets a ring go idle: it runs `turn` (fill
/// every free slot, push, ring, take the responses; returns how many it took) until
/// told to stop, and keeps going after the backend is gone (the ring is the guest's).
public final class Flooder: @unchecked Sendable {
    // @unchecked: `turn` runs only on the flooding thread; the rest is locked.
    private let turn: () -> Int
    private let stopping = Locked(false)
    private let done = DispatchSemaphore(value: 0)
    private let progress = Locked<(responses: Int, waiter: (count: Int, CheckedContinuation<Void, Never>)?)>((0, nil))

    public init(turn: @escaping () -> Int) { self.turn = turn }

    public func start() {
        Thread { [self] in
            defer { done.signal() }
            while !stopping.withLock({ $0 }) {
                let answered = turn()
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
    public func answered(_ count: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = progress.withLock { p -> Bool in
                if p.responses >= count { return true }
                p.waiter = (count, c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Stops flooding and awaits the thread's end, for at most `minimumDeadline`; whether
    /// it ended. The wait is on a thread of its own, not on `DispatchQueue.global()`: on
    /// Linux the cooperative pool runs on the same threads.
    public func stop() async -> Bool {
        stopping.withLock { $0 = true }
        return await onThread { [done] in done.wait(timeout: .now() + minimumDeadline) == .success }
    }
}
