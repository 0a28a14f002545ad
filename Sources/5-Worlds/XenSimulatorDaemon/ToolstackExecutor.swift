import Dispatch
import Foundation
import XenLocks

/// A thread of the daemon's own that runs its toolstack task.
///
/// The daemon answers a join only after the store work it needs; on the
/// cooperative pool that work could wait behind whatever else holds the pool's
/// few threads (a test waiting for the very join it asked for, in the worst
/// case), so it runs here instead, preferred by the task that does it.
final class ToolstackExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: `jobs` and `finished` are guarded by `lock`.
    private let lock = Lock()
    private var jobs: [UnownedJob] = []
    private var finished = false
    private let ready = DispatchSemaphore(value: 0)

    init(name: String) {
        let t = Thread { [self] in run() }
        t.name = name
        t.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        lock.withLock { jobs.append(unowned) }
        ready.signal()
    }

    /// Lets the thread end once the jobs queued so far have run.
    func finish() {
        lock.withLock { finished = true }
        ready.signal()
    }

    private func run() {
        while true {
            ready.wait()
            let next: UnownedJob? = lock.withLock { jobs.isEmpty ? nil : jobs.removeFirst() }
            if let next {
                next.runSynchronously(on: asUnownedTaskExecutor())
            } else if lock.withLock({ finished }) {
                return
            }
        }
    }
}
