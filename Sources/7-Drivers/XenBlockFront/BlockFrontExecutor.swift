import Atomics

/// A task executor that runs tasks on the device's first queue thread.
///
/// A task that prefers it (`Task(executorPreference: disk.executor)`,
/// `group.addTask(executorPreference:)`, `withTaskExecutorPreference`) hands its requests
/// to the ring without waking another thread, and is resumed by the response on the
/// thread that collected it: per operation two thread wake-ups fewer than a task on the
/// shared pool (caller → queue thread → caller). Such tasks share that thread with the
/// ring, so they should do little else: a task that blocks stalls the device.
///
/// While no queue is running (before attach, between connections, after shutdown) jobs
/// go to the global concurrent executor: a preference, never a place where work waits.
public final class BlockFrontExecutor: TaskExecutor, Sendable {
    /// Read once per job: an atomic reference, not a lock.
    private let current = ManagedAtomic<BlockFrontQueue?>(nil)

    init() {}

    /// Runs `job` on the first queue's thread, or on the global concurrent executor while no
    /// queue is running (or the queue is stopping).
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // acquiring: pairs with `use`; a queue that has stopped meanwhile refuses the job.
        if let queue = current.load(ordering: .acquiring), queue.enqueue(job) { return }
        globalConcurrentExecutor.enqueue(ExecutorJob(job))
    }

    /// The queue whose thread runs the jobs from now on (nil: the global executor).
    func use(_ queue: BlockFrontQueue?) {
        // releasing: the queue is fully set up before a job can reach it.
        current.store(queue, ordering: .releasing)
    }
}

extension BlockFrontQueue: AtomicReference {}
