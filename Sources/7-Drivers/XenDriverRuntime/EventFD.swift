import CXen
import Glibc

/// A non-blocking eventfd: a doorbell one thread rings and another polls.
///
/// A class so the descriptor is closed exactly once, when the last user is gone.
public final class EventFD: Sendable {
    /// The eventfd, non-blocking, closed when this object is deinitialised; poll it, do not close it.
    public let descriptor: Int32

    /// A new eventfd with a count of 0 (not readable); traps if `eventfd` fails (no descriptor left).
    public init() {
        descriptor = cxen_eventfd(0, 1)
        precondition(descriptor >= 0, "eventfd: errno \(errno)")
    }

    deinit { close(descriptor) }

    /// Makes the descriptor readable (a counter add: never blocks, never lost).
    @inline(__always)
    public func signal() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }

    /// Resets it to not readable; returns how often it was signalled.
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return read(descriptor, &value, 8) == 8 ? value : 0
    }
}
