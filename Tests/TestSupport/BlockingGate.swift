import Foundation

/// Holds each caller of ``pass()`` (a thread: it blocks) until ``open()``, or until
/// `minimumDeadline` (then ``timedOut``): bounded, as every wait of the tests. For a test
/// that a blocking call does not run on a thread of the cooperative pool.
public final class BlockingGate: @unchecked Sendable {
    // @unchecked: every field is under `condition`.
    private let condition = NSCondition()
    private var isOpen = false
    private var count = 0
    private var gaveUp = false

    public init() {}

    /// As many callers as the cooperative pool has threads (at least two): enough to hold
    /// every thread of the pool if the calls they make ran on it.
    public static var poolThreads: Int { max(2, ProcessInfo.processInfo.activeProcessorCount) }

    /// Callers that reached the gate so far.
    public var waiting: Int { condition.withLock { count } }
    /// Whether a caller gave up waiting.
    public var timedOut: Bool { condition.withLock { gaveUp } }

    public func pass() {
        condition.lock()
        defer { condition.unlock() }
        count += 1
        let deadline = Date(timeIntervalSinceNow: minimumDeadline)
        while !isOpen {
            if !condition.wait(until: deadline) {
                gaveUp = true
                return
            }
        }
    }

    public func open() {
        condition.withLock { isOpen = true }
        condition.broadcast()
    }
}
