import Synchronization
import XenLocks
import XenSockets

/// Something whose requests a device's first queue thread takes in itself: a server's
/// client socket, say (see ``BlockFrontend/serveInput(_:descriptor:)``). Its requests
/// then start on the thread that puts them on the ring, where a thread of the server's
/// own would have to wake that one for each batch (a wake-up and a lock handed between
/// two threads per batch, and on two vCPUs a batch that waits while the other runs).
public protocol BlockFrontInput: AnyObject, Sendable {
    /// Called on the queue thread while the descriptor is readable (or at its end, or
    /// failed): takes what it can without blocking (its calls to the device run their
    /// `done` on this thread too, later) and returns. It may stop watching
    /// (``BlockFrontend/pauseInput(descriptor:)``) or leave
    /// (``BlockFrontend/removeInput(descriptor:)``) from here.
    func takeInput()
    /// The device closed for good (``BlockFrontend/fail(_:)``): nothing will call
    /// ``takeInput()`` again, and the input is no longer the device's to serve.
    func inputHandedBack()
}

/// The inputs a device's first queue thread serves: one epoll set, which the thread
/// sleeps on beside its ring's event channel and looks at in each turn while any input
/// is registered. The device keeps it across connections: between two, inputs wait.
final class BlockFrontInputs: Sendable {
    private let epoll: Epoll
    private let inputs = Locked<[Int32: any BlockFrontInput]>([:])
    /// Inputs registered, readable without the lock (a turn's hint only, relaxed).
    private let registered = Atomic<Int>(0)
    /// Where the queue thread's waits put ready descriptors (only that thread touches it).
    private let ready = Locked(Epoll.Ready(capacity: 16))

    /// Nil if the process may not create an epoll set (out of descriptors): its inputs
    /// are then served by threads of their own.
    init?() {
        guard let e = try? Epoll() else { return nil }
        epoll = e
    }

    deinit { epoll.close() }

    /// The descriptor that is readable while any input is.
    var descriptor: Int32 { epoll.fd }

    func add(_ input: any BlockFrontInput, descriptor fd: Int32) {
        inputs.withLock { i in
            i[fd] = input
            registered.store(i.count, ordering: .relaxed)
        }
        epoll.watch(fd, Epoll.readable)
    }

    /// Stops watching `fd` until ``resume(descriptor:)`` (removed from the set, so even
    /// its end does not wake the thread meanwhile).
    func pause(descriptor fd: Int32) { epoll.forget(fd) }

    func resume(descriptor fd: Int32) { epoll.watch(fd, Epoll.readable) }

    func remove(descriptor fd: Int32) {
        epoll.forget(fd)
        inputs.withLock { i in
            i[fd] = nil
            registered.store(i.count, ordering: .relaxed)
        }
    }

    /// Forgets every input and tells each (the device closed).
    func handBack() {
        let all = inputs.withLock { i in
            defer {
                i = [:]
                registered.store(0, ordering: .relaxed)
            }
            return i
        }
        for (fd, input) in all {
            epoll.forget(fd)
            input.inputHandedBack()
        }
    }

    /// Whether an input is ready, without taking it (for a spinning thread).
    var anyReady: Bool {
        guard registered.load(ordering: .relaxed) > 0 else { return false }
        return ready.withLock { epoll.wait(&$0, timeoutMs: 0) > 0 }
    }

    /// On the queue thread: lets each ready input take what it has; true if any was ready.
    func serve() -> Bool {
        guard registered.load(ordering: .relaxed) > 0 else { return false }
        return ready.withLock { r in
            let n = epoll.wait(&r, timeoutMs: 0)
            guard n > 0 else { return false }
            // Looked up one by one: an input may leave (or another arrive) while one takes.
            for k in 0..<Int(n) {
                if let input = inputs.withLock({ $0[r[k].fd] }) { input.takeInput() }
            }
            return true
        }
    }
}
