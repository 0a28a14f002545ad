import Glibc

/// A pthread mutex, for set-up and control paths.
///
/// Not `Synchronization.Mutex`: on Linux that locks with raw futex calls which
/// ThreadSanitizer cannot see, so every access it guards is reported as a race,
/// and the project checks its concurrency claims under TSan.
public final class Lock: @unchecked Sendable {
    // @unchecked: the mutex lives at a fixed heap address and is only touched
    // through pthread calls, which do their own synchronisation.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    /// A new, unlocked, non-recursive mutex; traps if pthread cannot create it.
    public init() {
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

    /// Takes the mutex, waiting for it; not recursive, so a thread that already holds it deadlocks.
    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    /// Releases the mutex; only the thread that took it may.
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    /// Takes the mutex if it is free, without waiting; false if any thread (this one too) holds it.
    @inline(__always) public func tryLock() -> Bool { pthread_mutex_trylock(mutex) == 0 }

    /// Runs `body` holding the lock; typed throws pass through.
    @inline(__always)
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A value behind a `Lock`, with `Mutex`'s `withLock` shape.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: the value is only touched while `lock` is held.
    private let lock = Lock()
    /// The value, out of line: an `inout` access to a class's stored `var` is checked for
    /// exclusivity at run time (`swift_beginAccess`, a thread-local access set), which
    /// the lock already guarantees; on the drivers' per-request paths that check cost
    /// about as much as the lock (6.6 % of blkfront's queue thread at queue depth 32).
    private let value: UnsafeMutablePointer<Value>

    /// Wraps `value`, which from now on is reached only through ``withLock(_:)``.
    public init(_ value: Value) {
        self.value = .allocate(capacity: 1)
        self.value.initialize(to: value)
    }

    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
    }

    /// Runs `body` on the value while holding the lock; typed throws pass through. Do not let the reference escape `body`.
    public func withLock<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
        try lock.withLock { () throws(E) -> T in try body(&value.pointee) }
    }
}
