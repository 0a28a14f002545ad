import Synchronization
import XenDriverRuntime
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
    /// In the epoll set: rung for inputs to be called whether or not their descriptor is
    /// readable (a resumed input may hold requests it read before it stopped: its socket,
    /// read dry, would never say so).
    private let kick = EventFD()
    private let kicked = Locked<[Int32]>([])
    /// Kicks not yet taken, readable without the lock (relaxed: stored before the eventfd
    /// is rung, read after it is drained; the lock orders the list).
    private let kicksPending = Atomic<Int>(0)
    /// Inputs registered, readable without the lock (a turn's hint only, relaxed).
    private let registered = Atomic<Int>(0)
    /// Where the queue thread's waits put ready descriptors (only that thread touches it).
    private let ready = Locked(Epoll.Ready(capacity: 16))

    /// Nil if the process may not create an epoll set (out of descriptors): its inputs
    /// are then served by threads of their own.
    init?() {
        guard let e = try? Epoll() else { return nil }
        epoll = e
        epoll.watch(kick.descriptor, Epoll.readable)
    }

    deinit { epoll.close() }

    /// The descriptor that is readable while any input is.
    var descriptor: Int32 { epoll.fd }

    // The set is changed under `inputs`' lock, so a descriptor is watched only while an
    // input has it (a resume racing a removal cannot leave one watched for nobody).

    func add(_ input: any BlockFrontInput, descriptor fd: Int32) {
        inputs.withLock { i in
            i[fd] = input
            registered.store(i.count, ordering: .relaxed)
            epoll.watch(fd, Epoll.readable)
        }
    }

    /// Stops watching `fd` until ``resume(descriptor:)`` (removed from the set, so even
    /// its end does not wake the thread meanwhile).
    func pause(descriptor fd: Int32) {
        inputs.withLock { _ in epoll.forget(fd) }
    }

    /// Watches `fd` again and calls its input once at once.
    func resume(descriptor fd: Int32) {
        let watched = inputs.withLock { i -> Bool in
            guard i[fd] != nil else { return false }
            epoll.watch(fd, Epoll.readable)
            return true
        }
        guard watched else { return }
        kicked.withLock { k in
            k.append(fd)
            kicksPending.store(k.count, ordering: .relaxed)
        }
        kick.signal()
    }

    func remove(descriptor fd: Int32) {
        inputs.withLock { i in
            i[fd] = nil
            registered.store(i.count, ordering: .relaxed)
            epoll.forget(fd)
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
        if kicksPending.load(ordering: .relaxed) > 0 { return true }
        guard registered.load(ordering: .relaxed) > 0 else { return false }
        return ready.withLock { epoll.wait(&$0, timeoutMs: 0) > 0 }
    }

    /// On the queue thread: lets each input whose descriptor is ready, and each kicked
    /// one, take what it has; true if any was called. The kicks are looked at after the
    /// eventfd is drained, so a kick is either seen here or rings the eventfd again.
    func serve() -> Bool {
        var served = false
        if registered.load(ordering: .relaxed) > 0 {
            ready.withLock { r in
                let n = epoll.wait(&r, timeoutMs: 0)
                // Looked up one by one: an input may leave (or another arrive) while one takes.
                for k in 0..<max(0, Int(n)) {
                    let fd = r[k].fd
                    if fd == kick.descriptor {
                        kick.drain()
                    } else if take(fd) {
                        served = true
                    }
                }
            }
        }
        if kicksPending.load(ordering: .relaxed) > 0 {
            let fds = kicked.withLock { k in
                defer {
                    k = []
                    kicksPending.store(0, ordering: .relaxed)
                }
                return k
            }
            for fd in fds where take(fd) { served = true }
        }
        return served
    }

    /// After the thread's sleep ended on the epoll set: a kick whose input was served
    /// meanwhile (or has gone) leaves the eventfd readable; drained, it cannot turn the
    /// next sleep into a spin.
    func woke() { kick.drain() }

    /// Lets `fd`'s input take what it has; false if no input has `fd` any more (then it is
    /// not watched either).
    private func take(_ fd: Int32) -> Bool {
        let input = inputs.withLock { i -> (any BlockFrontInput)? in
            if i[fd] == nil { epoll.forget(fd) }
            return i[fd]
        }
        guard let input else { return false }
        input.takeInput()
        return true
    }
}
