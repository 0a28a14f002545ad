import Atomics
import CXen
import Glibc

/// A pthread mutex for the simulator's control paths (domain table, grant
/// tables, port allocation). Not used on the notify path.
final class Lock: @unchecked Sendable {
    // @unchecked: the mutex lives at a fixed heap address and is only touched
    // through pthread calls, which do their own synchronisation.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` holding the lock; typed throws pass through.
    @inline(__always)
    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A one-word spin lock at an address the caller owns (one per event port).
/// Held for a few instructions (and at most one eventfd write), so a short
/// spin then yielding the CPU beats parking a thread.
struct SpinLock {
    let word: UnsafeAtomic<UInt32>

    @inline(__always) func lock() {
        var spins = 0
        // acquiring: nothing done under the lock may move before taking it.
        while !word.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged {
            spins += 1
            if spins < 64 { cxen_cpu_relax() } else { sched_yield() }
        }
    }

    @inline(__always) func unlock() {
        // releasing: everything done under the lock is visible to the next holder.
        word.store(0, ordering: .releasing)
    }
}
