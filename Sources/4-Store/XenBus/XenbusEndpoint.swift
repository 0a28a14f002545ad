import Logging
import XenABI
import XenHypervisor
import XenLocks
import XenStore

/// What a split driver does when its handshake machine asks.
public protocol XenbusDeviceDriver: Sendable {
    /// Frontend: share the ring and bind the event channel; returns the writes of
    /// `ring-ref`, `event-channel` and features. Backend: finish hot-plug; returns the
    /// writes of its features. The endpoint makes them with the state that follows.
    func prepare() async throws -> XenbusWrites
    /// Frontend: read the backend's features and start I/O. Backend: read the
    /// frontend's keys, map its ring, bind its event channel, start serving.
    func connect() async throws
    /// Stop I/O and release what `prepare`/`connect` set up. Idempotent.
    func disconnect() async
}

/// Which half of a device an endpoint plays.
public enum XenbusRole: String, Sendable {
    /// `frontend` plays the guest's half (`device/<type>/<id>`), `backend` the serving
    /// domain's half (`backend/<type>/<domid>/<id>`).
    case frontend, backend
}

/// Runs one side of a device's XenBus handshake: watches the peer's `state`,
/// feeds the pure machine (`XenbusFrontend` / `XenbusBackend`) and performs
/// the actions it returns, calling the driver for `prepare`, `connect` and
/// `disconnect`. A driver hook that fails closes this device only, with its
/// reason in the device's `error` key, as Linux's `xenbus_dev_fatal` does.
public final class XenbusEndpoint: Sendable {
    /// Which half this endpoint plays, and so which handshake machine it runs.
    public let role: XenbusRole
    /// This side's directory (the one holding our `state`).
    public let path: String
    /// The peer's directory.
    public let peerPath: String
    private let store: any XenStoreConnection
    private let driver: any XenbusDeviceDriver
    private let logger: Logger
    private let inputs: AsyncStream<Input>
    private let continuation: AsyncStream<Input>.Continuation
    private let published = Locked<Published>(Published())

    /// The state this side last published and who is told when it changes.
    struct Published {
        var state: XenbusState = .unknown
        /// Set once `run()` returned: no state follows.
        var finished = false
        var observers: [UInt64: AsyncStream<XenbusState>.Continuation] = [:]
        var nextObserver: UInt64 = 0
        /// Callers of suspend/resume whose input `run()` has not taken yet: answered when
        /// it is taken, or when `run()` returns.
        var waiting: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    enum Input: Sendable {
        case peerChanged
        case local(XenbusEvent)
        /// Quiesce the driver and act on nothing until `.resume`; then answer waiter `id`.
        case suspend(id: UInt64)
        /// Resume the driver with the outcome; then answer waiter `id`.
        case resume(SuspendOutcome, id: UInt64)
    }

    /// Creates an endpoint for the half at `path` whose peer lives at `peerPath`; nothing
    /// happens until ``run()`` is called.
    public init(role: XenbusRole, store: any XenStoreConnection, path: String, peerPath: String,
                driver: any XenbusDeviceDriver, logger: Logger = Logger(label: "xenbus")) {
        self.role = role
        self.store = store
        self.path = path
        self.peerPath = peerPath
        self.driver = driver
        self.logger = logger
        (inputs, continuation) = AsyncStream.makeStream(of: Input.self)
    }

    /// The state this side last published.
    public var state: XenbusState { published.withLock { $0.state } }

    /// The states this side publishes, starting with the current one; the stream ends
    /// when ``run()`` returns (or the iterating task is cancelled). A consumer that falls
    /// behind sees the newest 64 states.
    public func states() -> AsyncStream<XenbusState> {
        let (stream, continuation) = AsyncStream.makeStream(of: XenbusState.self, bufferingPolicy: .bufferingNewest(64))
        let (id, finished) = published.withLock { p -> (UInt64, Bool) in
            continuation.yield(p.state)
            guard !p.finished else { return (0, true) }
            p.nextObserver += 1
            p.observers[p.nextObserver] = continuation
            return (p.nextObserver, false)
        }
        // Outside the lock: `finish()` runs `onTermination`, which takes it.
        if finished {
            continuation.finish()
        } else {
            continuation.onTermination = { [published] _ in published.withLock { _ = $0.observers.removeValue(forKey: id) } }
        }
        return stream
    }

    /// Waits until this side has published Connected: for a frontend, the driver's
    /// `connect` succeeded and I/O may start; for a backend, it serves the rings.
    /// Event-driven (it suspends on ``states()``, holding no thread) and bounded by
    /// `timeout`. Returns at once if the device is connected already.
    /// - Throws: ``XenbusError`` `.timedOut` when `timeout` passes first, `.closed` when
    ///   ``run()`` returned without connecting, `.cancelled` when the calling task is.
    public func connected(timeout: Duration) async throws(XenbusError) {
        enum Outcome: Sendable { case connected, finished, timedOut, cancelled }
        let outcome = await withTaskGroup(of: Outcome.self) { group in
            group.addTask { [self] in
                for await s in states() where s == .connected { return .connected }
                return Task.isCancelled ? .cancelled : .finished
            }
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return .cancelled }
                return .timedOut
            }
            let first = await group.next() ?? .cancelled
            group.cancelAll()
            return first
        }
        switch outcome {
        case .connected: return
        case .finished: throw XenbusError(.closed, "\(role) \(path) closed without connecting (state \(state))")
        case .timedOut: throw XenbusError(.timedOut, "\(role) \(path) did not connect within \(timeout) (state \(state))")
        case .cancelled: throw XenbusError(.cancelled, "\(role) \(path): the wait for Connected was cancelled")
        }
    }

    /// Asks for a clean close (unplug); `run()` returns once closed.
    public func requestClose() { continuation.yield(.local(.closeRequested)) }

    /// Undoes a close request: the device may connect again.
    public func requestReconnect() { continuation.yield(.local(.reconnectRequested)) }

    /// Quiesces the device for a save (Linux's `xenbus_dev_suspend`): between two handshake
    /// steps, asks a ``XenbusSuspendableDriver`` to ``XenbusSuspendableDriver/quiesce()``,
    /// then acts on nothing (peer changes, close requests) until ``resume(_:)``. Returns once
    /// quiesced, or at once when ``run()`` has returned. Each call is followed by one
    /// ``resume(_:)``.
    public func suspend() async {
        await enqueue { .suspend(id: $0) }
    }

    /// Ends a ``suspend()`` (Linux's `xenbus_dev_resume` / `xenbus_dev_cancel`):
    /// `.cancelled` goes on where the device was; `.resumed` has the driver drop the old
    /// session unreleased and starts a new handshake with the backend the store names
    /// now (the destination's). Returns once the driver has resumed; the handshake then
    /// goes on as usual (wait with ``connected(timeout:)``).
    public func resume(_ outcome: SuspendOutcome) async {
        await enqueue { .resume(outcome, id: $0) }
    }

    /// Hands `run()` an input carrying a continuation, answered when it is taken or when
    /// `run()` returns (so a caller never waits on an endpoint that no longer runs).
    private func enqueue(_ make: (UInt64) -> Input) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let id = published.withLock { p -> UInt64? in
                guard !p.finished else { return nil }
                p.nextWaiter += 1
                p.waiting[p.nextWaiter] = c
                return p.nextWaiter
            }
            guard let id else { return c.resume() }
            continuation.yield(make(id))
        }
    }

    /// Resumes waiter `id` exactly once: by `run()` taking the input, or by its end.
    private func answer(_ id: UInt64) {
        published.withLock { $0.waiting.removeValue(forKey: id) }?.resume()
    }

    /// Walks the handshake until the device is closed for good: a close was
    /// requested, or the peer's directory vanished. Store errors end it.
    public func run() async throws {
        defer { finishObservers() }
        var machine = role == .frontend ? Machine.frontend(XenbusFrontend()) : Machine.backend(XenbusBackend())
        let watch = try await store.watchEvents(peerPath + "/" + XenbusKey.state)
        let forwarder = Task { [continuation] in
            for await _ in watch { continuation.yield(.peerChanged) }
        }
        defer { forwarder.cancel() }
        // What our `state` key holds is not known at start, nor after a resume (the
        // toolstack wrote Initialising when it made the device): the first write reads it.
        var stateKnown = false
        try await perform(machine.start(), &machine, stateKnown: &stateKnown)
        // While suspended the device acts on nothing, as a suspended guest runs no watch
        // handler: peer changes are read afresh on resume, local events wait for it.
        var suspended = false
        var deferred: [XenbusEvent] = []
        for await input in inputs {
            switch input {
            case .peerChanged:
                if suspended { continue }
                try await perform(machine.handle(.peerState(try await peerState())), &machine, stateKnown: &stateKnown)
            case .local(let event):
                if suspended {
                    deferred.append(event)
                    continue
                }
                try await perform(machine.handle(event), &machine, stateKnown: &stateKnown)
                // The machines act on the peer only when its reading is fresh.
                try await perform(machine.handle(.peerState(try await peerState())), &machine, stateKnown: &stateKnown)
            case .suspend(let id):
                if !suspended, let driver = driver as? any XenbusSuspendableDriver { await driver.quiesce() }
                suspended = true
                answer(id)
            case .resume(let outcome, let id):
                if suspended {
                    suspended = false
                    if let driver = driver as? any XenbusSuspendableDriver { await driver.resume(outcome) }
                    answer(id)
                    // The peer's state is read while the resume's own state is written: after
                    // a migration both round trips are part of the guest's downtime. A local
                    // event deferred meanwhile wants a reading taken after it.
                    async let peerNow = peerState()
                    if outcome == .resumed {
                        stateKnown = false
                        try await perform(machine.handle(.resumed), &machine, stateKnown: &stateKnown)
                    }
                    var peer = try await peerNow
                    for event in deferred { try await perform(machine.handle(event), &machine, stateKnown: &stateKnown) }
                    if !deferred.isEmpty { peer = try await peerState() }
                    deferred = []
                    try await perform(machine.handle(.peerState(peer)), &machine, stateKnown: &stateKnown)
                } else {
                    answer(id)
                }
            }
            if machine.isFinished { break }
        }
    }

    /// Ends every ``states()`` stream: no state follows once `run()` returned.
    private func finishObservers() {
        let (observers, waiters) = published.withLock { p in
            p.finished = true
            defer {
                p.observers = [:]
                p.waiting = [:]
            }
            return (Array(p.observers.values), Array(p.waiting.values))
        }
        for observer in observers { observer.finish() }
        for waiter in waiters { waiter.resume() }
    }

    /// The peer's state; a value that is no XenbusState reads as Unknown, which the
    /// machines take as the peer gone (this device closes), with the reason in `error`.
    private func peerState() async throws -> XenbusState? {
        do {
            return try await store.readState(peerPath)
        } catch let error as XenstoreValueError {
            logger.error("\(role) \(path): \(error)")
            try? await store.write(path + "/error", "state: \(error)")
            return .unknown
        } catch let error as XenStoreError where error.code == .accessDenied {
            // The peer's directory is gone and its parent is not ours to read: xenstored
            // answers EACCES where dom0 would get ENOENT. The peer vanished, as Linux's
            // xenbus_read_driver_state reads any failure.
            return nil
        }
    }

    private func perform(_ actions: [XenbusAction], _ machine: inout Machine, stateKnown: inout Bool) async throws {
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .publish(let s):
                try await publish(s, stateKnown: &stateKnown)
            case .prepare:
                // The peer's state is read while the hook runs (a change after the reading
                // fires the watch again): after a resume each round trip in turn is downtime.
                // The reading is acted on before the state the prepare publishes (taken
                // before it, it would otherwise answer that state), and again after it.
                let running = Task { [driver] in await self.hook("prepare") { try await driver.prepare() } }
                let peer: XenbusState?
                do {
                    peer = try await peerState()
                    try await perform(machine.handle(.peerState(peer)), &machine, stateKnown: &stateKnown)
                } catch {
                    _ = await running.value
                    throw error
                }
                // What follows a prepare that succeeds: the machine does not move while the
                // hook runs.
                var next = machine
                var ready = next.handle(.resourcesReady)[...]
                let outcome: HookOutcome
                if case .publish(let s)? = ready.first {
                    ready = ready.dropFirst()
                    outcome = try await hookThenPublish("prepare", running, s, stateKnown: &stateKnown)
                } else {
                    // No state follows (the session ended meanwhile): the writes alone,
                    // as before a handshake that reuses this preparation (a backend's).
                    outcome = try await hookThenWrite(running)
                }
                switch outcome {
                case .done:
                    machine = next
                    queue += ready
                case .hookFailed, .writesFailed:
                    // Nothing of the writes was made. What a prepare that failed had taken it
                    // gave back itself; what one whose writes failed took is let go here.
                    if outcome == .writesFailed { await driver.disconnect() }
                    queue.removeAll()
                    queue += machine.handle(.closeRequested)
                }
                queue += machine.handle(.peerState(peer))
            case .connect:
                let outcome: HookOutcome
                if case .publish(let s)? = queue.first {
                    queue.removeFirst()
                    let running = Task { [driver] in
                        await self.hook("connect") { () async throws -> XenbusWrites in
                            try await driver.connect()
                            return .empty
                        }
                    }
                    outcome = try await hookThenPublish("connect", running, s, stateKnown: &stateKnown)
                } else {
                    outcome = await hook("connect", driver.connect) == nil ? .hookFailed : .done
                }
                if outcome != .done {
                    // The rest of this batch assumed a connection (it publishes
                    // Connected): dropped, so the peer never sees Connected. The peer is
                    // read first: one that moved on while the hook ran (it let go of the
                    // keys the hook read) takes the machine out of Connected, and the
                    // refusal, which is of keys it still offers, no longer applies.
                    queue.removeAll()
                    let peer = try await peerState()
                    queue += machine.handle(.peerState(peer))
                    queue += machine.handle(.connectRefused)
                    queue += machine.handle(.peerState(peer))
                }
            case .disconnect:
                await driver.disconnect()
            case .readPeer:
                queue += machine.handle(.peerState(try await peerState()))
            }
        }
    }

    /// Writes our `state` as Linux's `xenbus_switch_state` does: only while the device's
    /// directory exists. The toolstack removes it to unplug the device; a late write would
    /// bring it back, and nothing would remove it again. Three round trips in turn (after a
    /// resume each is part of the guest's downtime): the transaction's start; the check and
    /// the write together; the commit. The check is of the key naming the peer (`backend`
    /// in a frontend's directory, `frontend` in a backend's), which the toolstack writes
    /// with the directory: a read of `state` itself would see the write beside it when the
    /// store serves that first, and a write to a directory that is gone is discarded with
    /// the transaction, never committed. When the key's content is not `known`, one read
    /// first, and a key that holds `s` already is left as it is. False when the directory
    /// is gone.
    /// With `after` (a hook's outcome: its writes, or nil when it failed), the transaction
    /// opens and checks while the hook runs, then makes the writes with the state's, all in
    /// flight together, or is abandoned (``HookFailed``); the key is not read first then.
    private func writeState(_ s: XenbusState, known: Bool,
                            after: (() async -> XenbusWrites?)? = nil) async throws -> Bool {
        let statePath = path + "/" + XenbusKey.state
        if !known, after == nil {
            guard let current = try await store.readIfPresent(statePath) else { return false }
            if current == s.xenstoreValue { return true }
        }
        let peerKey = path + "/" + (role == .frontend ? XenbusKey.backend : XenbusKey.frontend)
        struct DirectoryGone: Error {}
        do {
            return try await store.inTransaction { tx in
                async let there = tx.exists(peerKey)
                var writes: XenbusWrites?
                if let after {
                    guard let hooked = await after() else { throw HookFailed() }
                    writes = hooked
                }
                async let made = Self.make(writes, in: tx)
                let wrote = await tx.writeOutcome(statePath, s.xenstoreValue)
                guard try await there else { throw DirectoryGone() }
                if let failed = await made { throw failed }
                if let wrote { throw wrote }
                return true
            }
        } catch is DirectoryGone {
            return false
        }
    }

    /// Writes our `state` (after a hook, with its writes: see ``writeState(_:known:after:)``)
    /// and tells the observers; a directory the toolstack removed keeps neither.
    private func publish(_ s: XenbusState, after: (() async -> XenbusWrites?)? = nil, stateKnown: inout Bool) async throws {
        logger.debug("\(role) \(path): \(s)")
        let written = try await writeState(s, known: stateKnown, after: after)
        stateKnown = true
        if !written { logger.debug("\(role) \(path): removed; \(s) not written") }
        published.withLock { p in
            p.state = s
            for observer in p.observers.values { observer.yield(s) }
        }
    }

    /// How a hook and the writes after it went.
    enum HookOutcome { case done, hookFailed, writesFailed }

    /// The hook a transaction waited for failed: the transaction was abandoned.
    struct HookFailed: Error {}

    /// A hook's writes failed inside a transaction, which was then abandoned.
    struct HookWritesFailed: Error {
        let underlying: any Error
    }

    /// Opens the transaction that publishes `s` while the hook `running` goes on (its start
    /// is a round trip the hook's own work hides), then writes `s` with the hook's writes.
    /// Neither is made when the hook threw (nil: its reason is in `error`) or the writes fail.
    private func hookThenPublish(_ name: String, _ running: Task<XenbusWrites?, Never>, _ s: XenbusState,
                                 stateKnown: inout Bool) async throws -> HookOutcome {
        do {
            try await publish(s, after: { await running.value }, stateKnown: &stateKnown)
            return .done
        } catch is HookFailed {
            return .hookFailed
        } catch let failed as HookWritesFailed {
            await record(name, failed.underlying)
            return .writesFailed
        } catch {
            // The store failed: the hook still ends before this does.
            _ = await running.value
            throw error
        }
    }

    /// Waits for the prepare hook `running`, then makes its writes in a transaction of their own.
    private func hookThenWrite(_ running: Task<XenbusWrites?, Never>) async throws -> HookOutcome {
        guard let writes = await running.value else { return .hookFailed }
        do {
            try await store.inTransaction { tx in
                if let failed = await Self.make(writes, in: tx) { throw failed }
            }
            return .done
        } catch let failed as HookWritesFailed {
            await record("prepare", failed.underlying)
            return .writesFailed
        }
    }

    /// Makes `writes` in `tx`: nil when they succeed, the store's `EAGAIN` as it is (the
    /// transaction is tried again), any other failure as ``HookWritesFailed``.
    private static func make(_ writes: XenbusWrites?, in tx: any XenStoreOperations) async -> (any Error)? {
        guard let writes else { return nil }
        do {
            try await writes.apply(to: tx)
            return nil
        } catch let error as XenStoreError where error.code == .again {
            return error
        } catch {
            return HookWritesFailed(underlying: error)
        }
    }

    /// Runs a driver hook; on failure records the reason in `error` and returns nil.
    private func hook<T>(_ name: String, _ body: () async throws -> T) async -> T? {
        do {
            return try await body()
        } catch {
            await record(name, error)
            return nil
        }
    }

    /// Logs a hook's failure and leaves its reason in the device's `error` key.
    private func record(_ name: String, _ error: any Error) async {
        logger.error("\(role) \(path): \(name) failed: \(error)")
        try? await store.write(path + "/error", "\(name): \(error)")
    }

    /// The two machines behind one interface.
    enum Machine {
        case frontend(XenbusFrontend)
        case backend(XenbusBackend)

        mutating func start() -> [XenbusAction] {
            switch self {
            case .frontend(var m): defer { self = .frontend(m) }; return m.start()
            case .backend(var m): defer { self = .backend(m) }; return m.start()
            }
        }

        mutating func handle(_ event: XenbusEvent) -> [XenbusAction] {
            switch self {
            case .frontend(var m): defer { self = .frontend(m) }; return m.handle(event)
            case .backend(var m): defer { self = .backend(m) }; return m.handle(event)
            }
        }

        /// Closed and not coming back: asked to stay closed, or the peer is gone.
        var isFinished: Bool {
            switch self {
            case .frontend(let m): m.phase == .closed && (m.closeWanted || m.peerGone)
            case .backend(let m): m.phase == .closed && (m.closeWanted || m.peerGone)
            }
        }
    }
}
