import Dispatch

/// A task executor with one thread of its own: a task that prefers it
/// (`Task(executorPreference:)`, `withTaskExecutorPreference`, ``onOwnExecutor(named:_:)``)
/// runs there between its suspensions, so the calls of its that block (daemon round trips,
/// a stream written to a socket, a poll with sleeps) hold no thread of the cooperative pool,
/// and none waits for a thread to start as ``onOwnThread(named:_:)`` would for each call.
/// Its jobs run one at a time, in the order they came.
public final class ThreadExecutor: TaskExecutor, Sendable {
    private struct Queue {
        var jobs: [UnownedJob] = []
        var finished = false
    }

    private let queue = Locked(Queue())
    private let ready = DispatchSemaphore(value: 0)

    /// Starts the thread, named `name` (what `ps` and `perf` show).
    public init(name: String) {
        startDetachedThread(named: name) { [self] in run() }
    }

    /// Runs `job` on the thread after those before it.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.withLock { $0.jobs.append(job) }
        ready.signal()
    }

    /// Lets the thread end once the jobs queued so far have run; nothing may be queued after.
    public func finish() {
        queue.withLock { $0.finished = true }
        ready.signal()
    }

    private func run() {
        while true {
            ready.wait()
            let (next, finished) = queue.withLock { q in (q.jobs.isEmpty ? nil : q.jobs.removeFirst(), q.finished) }
            if let next {
                next.runSynchronously(on: asUnownedTaskExecutor())
            } else if finished {
                return
            }
        }
    }
}

/// Runs `body` on a ``ThreadExecutor`` of its own named `name` (its child tasks too), for
/// work made of blocking calls between awaits; the thread ends with it.
public func onOwnExecutor<T: Sendable>(named name: String, _ body: () async throws -> T) async throws -> T {
    let executor = ThreadExecutor(name: name)
    defer { executor.finish() }
    return try await withTaskExecutorPreference(executor, operation: body)
}
