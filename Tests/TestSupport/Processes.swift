import Foundation
import Glibc

// Awaiting a child process without holding a cooperative-pool thread: `Process`'s
// `waitUntilExit` blocks the calling thread (and has no bound), so a test looks at
// `isRunning` between `Task.sleep`s instead.

/// The exit status of `process`, awaited: looked for every `interval` for at most
/// `seconds` (at least `minimumDeadline`). Past that the process is killed
/// (`killAndAwait`) and the answer is nil.
public func exitStatus(
    of process: Process, within seconds: Double = minimumDeadline, every interval: Duration = .milliseconds(20)
) async -> Int32? {
    if await eventually(seconds, every: interval, { !process.isRunning }) { return process.terminationStatus }
    await killAndAwait(process)
    return nil
}

/// Kills `process` (SIGKILL, by pid, if it still runs) and awaits its end, for at most
/// `minimumDeadline`; whether it ended. (One SIGKILL does not end is stuck in the
/// kernel: its test fails instead of hanging.)
@discardableResult
public func killAndAwait(_ process: Process) async -> Bool {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    return await eventually(every: .milliseconds(5)) { !process.isRunning }
}
