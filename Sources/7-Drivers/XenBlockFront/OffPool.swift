import Dispatch

/// Runs a call that blocks (waits for a thread to stop, retries an unshare) on a
/// dispatch thread, so it never holds one of the few cooperative threads async code
/// needs to make progress (on two cores, two blocked threads stall every task).
func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in
        DispatchQueue.global().async { c.resume(returning: body()) }
    }
}
