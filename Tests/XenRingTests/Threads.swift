import Glibc
import TestSupport

/// A joinable pthread running `body`; tests bound what `body` waits for.
struct TestThread {
    private var thread: pthread_t

    init(_ body: @escaping @Sendable () -> Void) {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        thread = t
    }

    func join() { pthread_join(thread, nil) }

    /// `join` without holding a cooperative-pool thread: the join waits on a thread of
    /// its own (`onThread`), which is what an async test calls.
    func joined() async { await onThread { [self] in join() } }
}

/// Spins briefly, then yields, then sleeps: waiting on a peer thread on a
/// shared two-core machine without burning it.
struct Backoff {
    var spins = 0
    mutating func reset() { spins = 0 }
    mutating func pause() {
        spins += 1
        if spins < 100 { return }
        if spins < 1000 { sched_yield(); return }
        usleep(50)
    }
}

/// What one test thread found; read only after it was joined.
final class ThreadReport: @unchecked Sendable {
    // @unchecked: written by one thread, read by another after pthread_join.
    var failures: [String] = []
    var count = 0
    func fail(_ message: String) { if failures.count < 10 { failures.append(message) } }
}
