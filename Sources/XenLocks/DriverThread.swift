import CXen
import Dispatch
import Foundation
import Glibc

/// A driver's own thread (a blkback or blkfront queue, a vif queue, the netfront pump):
/// started once, asked to stop through a descriptor its loop polls with its others, and
/// waited for with a time limit, so a stuck driver shows as `false`, never as a hang.
public final class DriverThread: Sendable {
    /// Readable once ``stop(timeout:)`` was called: the thread's loop polls it and returns.
    public let stopDescriptor: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let started = Locked(false)

    public init() {
        stopDescriptor = cxen_eventfd(0, 1)
        precondition(stopDescriptor >= 0, "eventfd for a driver thread: errno \(errno)")
    }

    deinit { close(stopDescriptor) }

    /// Whether ``start(name:cpu:_:)`` was called.
    public var isStarted: Bool { started.withLock { $0 } }

    /// Runs `body` on a new thread. `name` is what `ps`, `top -H` and `perf` show (its
    /// first 15 bytes; Foundation's `Thread.name` alone names only the object); `cpu`
    /// pins the thread to one CPU.
    public func start(name: String, cpu: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let first = started.withLock { s in defer { s = true }; return !s }
        precondition(first, "\(name) started twice")
        let thread = Thread { [finished] in
            _ = cxen_name_thread(name)
            if let cpu { _ = cxen_pin_to_cpu(Int32(cpu)) }
            body()
            finished.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Makes ``stopDescriptor`` readable and waits at most `timeout` seconds for the
    /// thread to end; true if it did, or never started. Once true, later calls return
    /// true at once.
    @discardableResult
    public func stop(timeout: Double) -> Bool {
        guard isStarted else { return true }
        var one: UInt64 = 1
        _ = write(stopDescriptor, &one, 8)
        let stopped = finished.wait(timeout: .now() + timeout) == .success
        if stopped { finished.signal() }
        return stopped
    }
}
