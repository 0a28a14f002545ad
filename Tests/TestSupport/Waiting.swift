import Foundation

// Every deadline here only keeps a broken test from hanging. With the suites in
// parallel on two shared cores a correct test can wait its turn for long, so no
// wait is shorter than a minute (the suites' time limits still bound it).

/// The shortest deadline any wait here accepts, in seconds.
public let minimumDeadline: Double = 180

/// Looks at `body` every `interval` until it is true or `seconds` (at least
/// `minimumDeadline`) pass or the task is cancelled, then once more; whether it
/// became true.
///
/// Sleeps between looks with `Task.sleep`: a waiting test must not hold one of
/// the cooperative pool's few threads (the driver threads it waits for share them).
public func eventually(
    _ seconds: Double = minimumDeadline, every interval: Duration = .milliseconds(10),
    _ body: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(max(seconds, minimumDeadline))
    // A cancelled test (its time limit passed) stops looking instead of spinning.
    while ContinuousClock.now < deadline, !Task.isCancelled {
        if try await body() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await body()
}

/// `eventually` for code on a thread the test started itself (in `onThread`, say):
/// sleeps the calling thread between looks (not at all for an `interval` of zero, for
/// a `body` that itself waits on an event). Not for a synchronous `@Test` or a helper
/// it calls: swift-testing runs those on the cooperative pool too. There, and in async
/// code, use `eventually`, which gives the thread back instead.
public func eventuallyBlocking(
    _ seconds: Double = minimumDeadline, every interval: Duration = .milliseconds(1),
    _ body: () throws -> Bool
) rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(max(seconds, minimumDeadline))
    while ContinuousClock.now < deadline {
        if try body() { return true }
        if interval > .zero { sleepThread(for: interval) }
    }
    return try body()
}

/// Blocks the calling thread for `duration`: for a test's own threads (a scripted server,
/// a polling helper), never a cooperative-pool one.
public func sleepThread(for duration: Duration) {
    Thread.sleep(forTimeInterval: Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
}

/// `body` did not finish within `seconds`.
public struct TimedOut: Error, CustomStringConvertible {
    public let seconds: Double
    public init(seconds: Double) { self.seconds = seconds }
    public var description: String { "timed out after \(seconds) s" }
}

/// Awaits `body` for at most `seconds` (at least `minimumDeadline`); throws
/// `TimedOut` past that, and cancels `body`.
public func withTimeout<T: Sendable>(
    _ seconds: Double, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let seconds = max(seconds, minimumDeadline)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut(seconds: seconds) }
        return value
    }
}

/// Runs `body`, then `cleanup` whether or not `body` threw: an `async` `defer`, for a
/// clean-up that awaits (a server stopped, a child process awaited) instead of blocking
/// the thread a `defer` would run it on.
public func withCleanup<T>(_ body: () async throws -> T, cleanup: () async -> Void) async throws -> T {
    do {
        let value = try await body()
        await cleanup()
        return value
    } catch {
        await cleanup()
        throw error
    }
}
