import Foundation

// What a test does that blocks (a socket round trip, a call on a FUSE file, an engine's
// submit and reap, a wait for a thread or a child process) goes on a thread of its own:
// a synchronous call from an `async` test, or from a synchronous `@Test` (which
// swift-testing runs on the cooperative pool too), holds one of the pool's few threads,
// and on two cores two blocked pool threads stall every task of the process. This is
// the tests' one helper for it (Foundation only, as all of TestSupport); code in
// Sources uses XenLocks's `onOwnThread(named:_:)`, which also names the thread.

/// Runs `body` on a new thread and awaits its result; no pool thread waits meanwhile.
/// `body` itself bounds what it waits for.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
        Thread { c.resume(returning: body()) }.start()
    }
}

/// `onThread` for a `body` that throws: its error is the awaiting task's.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        Thread { c.resume(with: Result { try body() }) }.start()
    }
}
