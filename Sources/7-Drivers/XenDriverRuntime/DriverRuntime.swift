import Atomics
import CXen
import Glibc
import XenHypervisor
import XenLocks

/// One driver queue's thread and its loop, the same for every queue (blkback, blkfront,
/// netback, netfront): the service's turns until stop, a bounded spin, then a sleep on
/// the stop signal, the event channel and the service's descriptors.
///
/// Stop is honoured between every two turns (an atomic flag, one relaxed load a turn),
/// so a peer that keeps the ring busy cannot keep the thread running; the stop signal
/// wakes a sleeping thread. ``stop()`` joins with no time limit: what the thread uses may
/// be released only once it returned, and the ``ThreadExited`` it returns is what the
/// release takes.
public final class DriverRuntime: @unchecked Sendable {
    // @unchecked: `thread` is written once before `state` leaves `.idle` and read by the
    // joiner under `joinLock`; the rest is atomic or behind XenLocks' locks.

    /// Where the queue's thread is in its life, from ``idle`` to ``joined``; it only moves forward.
    public enum State: UInt8, AtomicValue, Sendable {
        /// Not started: nothing runs, nothing to wait for.
        case idle
        /// Started: the loop runs, or the thread is about to run it.
        case running
        /// The loop returned and the service finished; the thread is exiting.
        case finished
        /// Joined: the thread is gone.
        case joined
    }

    private let stopFlag = ManagedAtomic<Bool>(false)
    private let stopSignal = EventFD()
    private let stateAtomic = ManagedAtomic<State>(.idle)
    private var thread = pthread_t()
    private let joinLock = Lock()
    private let waiters = Locked<[CheckedContinuation<Void, Never>]>([])
    private let failureBox = Locked<(any Error)?>(nil)
    /// Times the thread slept.
    public let sleeps: DriverCounter

    /// A runtime with no thread yet, counting its thread's sleeps into `sleeps`; ``start(name:cpu:service:events:extraDescriptors:onFailure:)`` starts it.
    public init(sleeps: DriverCounter = DriverCounter(0)) {
        self.sleeps = sleeps
    }

    /// Where the thread is; `.joined` once nothing it used is touched any more.
    public var state: State { stateAtomic.load(ordering: .acquiring) }

    /// Why the loop ended by itself (the peer broke the ring, a handle failed), if it did.
    public var failure: (any Error)? { failureBox.withLock { $0 } }

    /// Whether stop was asked for; a service may look at it inside a long step.
    @inline(__always)
    public var isStopRequested: Bool { stopFlag.load(ordering: .relaxed) }

    /// Starts the thread. `name` is what `ps`, `top -H` and `perf` show (its first 15
    /// bytes); `cpu` pins it. `extraDescriptors` are the service's, polled with the stop
    /// signal and `events` (see ``PollSet/watch(extra:_:)``). `onFailure` is called on the
    /// thread, last, when the loop ended by itself.
    public func start<Service: DriverService>(
        name: String, cpu: Int? = nil, service: Service, events: any EventChannels, extraDescriptors: [Int32] = [],
        onFailure: (@Sendable (any Error) -> Void)? = nil
    ) {
        let poll = PollSet(stop: stopSignal.descriptor, events: events.fileDescriptor.rawValue, extras: extraDescriptors)
        let body = Body { [self] in
            _ = cxen_name_thread(name)
            if let cpu { _ = cxen_pin_to_cpu(Int32(cpu)) }
            let error = DriverLoop(runtime: self, service: service, events: events, poll: poll).run()
            if let error {
                failureBox.withLock { $0 = error }
                onFailure?(error)
            }
            stateAtomic.store(.finished, ordering: .releasing)
            for w in waiters.withLock({ w in defer { w = [] }; return w }) { w.resume() }
        }
        joinLock.withLock {
            let (first, _) = stateAtomic.compareExchange(expected: .idle, desired: .running, ordering: .acquiringAndReleasing)
            precondition(first, "\(name) started twice")
            let unmanaged = Unmanaged.passRetained(body)
            let rc = pthread_create(&thread, nil, { raw in
                let body = Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue()
                body.run()
                return nil
            }, unmanaged.toOpaque())
            precondition(rc == 0, "pthread_create for \(name): \(rc)")
        }
    }

    /// Asks the loop to end after its current turn, and wakes it if it sleeps.
    public func requestStop() {
        stopFlag.store(true, ordering: .relaxed)
        stopSignal.signal()
    }

    /// Asks the loop to end and waits until the thread is gone: no time limit, because
    /// the caller is about to release what the thread uses. Blocks: not from a task on
    /// the cooperative pool (use ``stopped()``), not from the thread itself.
    @discardableResult
    public func stop() -> ThreadExited {
        requestStop()
        join()
        return ThreadExited()
    }

    /// ``stop()`` for async callers: the wait is a continuation the thread resumes when it
    /// finished, so no pool thread is held; the join after it only reaps an ended thread.
    @discardableResult
    public func stopped() async -> ThreadExited {
        requestStop()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = waiters.withLock { w -> Bool in
                // Under the lock: the thread takes the waiters after its store of `.finished`.
                if state != .running { return true }
                w.append(c)
                return false
            }
            if now { c.resume() }
        }
        join()
        return ThreadExited()
    }

    private func join() {
        joinLock.withLock {
            guard stateAtomic.load(ordering: .acquiring) != .idle, stateAtomic.load(ordering: .acquiring) != .joined else { return }
            precondition(pthread_equal(pthread_self(), thread) == 0, "a driver thread cannot stop itself")
            let rc = pthread_join(thread, nil)
            precondition(rc == 0, "pthread_join: \(rc)")
            stateAtomic.store(.joined, ordering: .releasing)
        }
    }

    deinit {
        // A thread still running holds this object (its body retains it): here it has been
        // joined, or was never started. A finished but unjoined thread is reaped.
        if stateAtomic.load(ordering: .acquiring) == .finished { pthread_detach(thread) }
    }
}

/// The thread's closure, boxed to cross pthread_create's C pointer.
private final class Body {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
