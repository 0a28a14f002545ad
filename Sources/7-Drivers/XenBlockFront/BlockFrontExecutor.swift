import Atomics
import Glibc

/// A task executor that runs tasks on the device's first queue thread.
///
/// A task that prefers it (`Task(executorPreference: disk.executor)`,
/// `group.addTask(executorPreference:)`, `withTaskExecutorPreference`) hands its requests
/// to the ring without waking another thread, and is resumed by the response on the
/// thread that collected it: per operation two thread wake-ups fewer than a task on the
/// shared pool (caller → queue thread → caller). Such tasks share that thread with the
/// ring, so they should do little else: a task that blocks stalls the device.
///
/// A thread of the caller's own may lend itself for the same work
/// (``lendingThisThread(_:)``): a task it starts while the queue thread sleeps runs on it
/// at once, its requests go onto the ring from it, and it waits a moment for their
/// answers, so a request at queue depth 1 wakes no thread in this process.
///
/// While no queue is running (before attach, between connections, after shutdown) jobs
/// go to the global concurrent executor: a preference, never a place where work waits.
public final class BlockFrontExecutor: TaskExecutor, Sendable {
    /// Read once per job: an atomic reference, not a lock.
    private let current = ManagedAtomic<BlockFrontQueue?>(nil)

    init() {}

    /// Runs `job` on the first queue's thread, or on the global concurrent executor while no
    /// queue is running (or the queue is stopping); on a lent thread, there, while the queue
    /// thread sleeps.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // acquiring: pairs with `use`; a queue that has stopped meanwhile refuses the job.
        if let queue = current.load(ordering: .acquiring) {
            if LentThread.isLent(to: self), queue.assist(job) { return }
            if queue.enqueue(job) { return }
        }
        globalConcurrentExecutor.enqueue(ExecutorJob(job))
    }

    /// Runs `body`, during which a task that prefers this executor and is started (or
    /// resumed) on the calling thread may run on it, when the queue thread is asleep: its
    /// requests reach the ring without a wake-up, and the thread waits briefly for their
    /// answers (at most `BlockPolling`'s spin) to finish the task itself. For a thread
    /// of the caller's own that may block a little, such as a server's connection thread
    /// at queue depth 1; never for a thread of the cooperative pool.
    public func lendingThisThread<T>(_ body: () throws -> T) rethrows -> T {
        let outer = LentThread.lend(to: self)
        defer { LentThread.restore(outer) }
        return try body()
    }

    /// The queue whose thread runs the jobs from now on (nil: the global executor).
    func use(_ queue: BlockFrontQueue?) {
        // releasing: the queue is fully set up before a job can reach it.
        current.store(queue, ordering: .releasing)
    }
}

/// Which executor the current thread is lent to (a thread-specific pointer, unretained:
/// set only for the duration of ``BlockFrontExecutor/lendingThisThread(_:)``).
enum LentThread {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let rc = pthread_key_create(&key, nil)
        precondition(rc == 0, "pthread_key_create: \(rc)")
        return key
    }()

    static func isLent(to executor: BlockFrontExecutor) -> Bool {
        // Optional: imported as an implicitly unwrapped pointer, nil on a thread never lent.
        let lent: UnsafeMutableRawPointer? = pthread_getspecific(key)
        return lent == Unmanaged.passUnretained(executor).toOpaque()
    }

    static func lend(to executor: BlockFrontExecutor) -> UnsafeMutableRawPointer? {
        let outer: UnsafeMutableRawPointer? = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(executor).toOpaque())
        return outer
    }

    static func restore(_ outer: UnsafeMutableRawPointer?) { pthread_setspecific(key, outer) }
}

extension BlockFrontQueue: AtomicReference {}
