import CXen
import Glibc

/// Runs `work`, a call that blocks (a daemon round trip, a wait for a thread to stop, a
/// retry with sleeps), on a thread of its own named `name`, and hands its result to the
/// awaiting task: no thread of the cooperative pool waits meanwhile (on two cores, two
/// blocked pool threads stall every task of the process). Each call starts a thread: for
/// set-up and control paths, not per I/O.
public func onOwnThread<T: Sendable>(named name: String, _ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
        startDetachedThread(named: name) { c.resume(returning: work()) }
    }
}

/// ``onOwnThread(named:_:)`` for work that throws: its error is the awaiting task's.
public func onOwnThread<T: Sendable>(named name: String, _ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        startDetachedThread(named: name) {
            do { c.resume(returning: try work()) } catch { c.resume(throwing: error) }
        }
    }
}

/// A detached pthread named `name` (what `ps`, `top -H` and `perf` show, its first 15
/// bytes; Foundation's `Thread.name` does not reach the kernel on Linux) running `body`;
/// traps if none can be made (the process is out of threads: nothing it waits for could
/// run either).
public func startDetachedThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) { (self.name, self.body) = (name, body) }
    }
    let start = Unmanaged.passRetained(Start(name, body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
        _ = cxen_name_thread(start.name)
        start.body()
        return nil
    }, start)
    precondition(rc == 0, "pthread_create for \(name): \(rc)")
    pthread_detach(thread)
}
