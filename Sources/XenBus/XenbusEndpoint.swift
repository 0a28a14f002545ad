import Logging
import XenABI
import XenLocks
import XenStore

/// What a split driver does when its handshake machine asks.
public protocol XenbusDeviceDriver: Sendable {
    /// Frontend: share the ring, bind the event channel, write `ring-ref`,
    /// `event-channel` and features. Backend: finish hot-plug, write features.
    func prepare() async throws
    /// Frontend: read the backend's features and start I/O. Backend: read the
    /// frontend's keys, map its ring, bind its event channel, start serving.
    func connect() async throws
    /// Stop I/O and release what `prepare`/`connect` set up. Idempotent.
    func disconnect() async
}

/// Which half of a device an endpoint plays.
public enum XenbusRole: String, Sendable {
    case frontend, backend
}

/// Runs one side of a device's XenBus handshake: watches the peer's `state`,
/// feeds the pure machine (`XenbusFrontend` / `XenbusBackend`) and performs
/// the actions it returns, calling the driver for `prepare`, `connect` and
/// `disconnect`. A driver hook that fails closes this device only, with its
/// reason in the device's `error` key, as Linux's `xenbus_dev_fatal` does.
public final class XenbusEndpoint: Sendable {
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
    private let published = Locked<XenbusState>(.unknown)

    enum Input: Sendable {
        case peerChanged
        case local(XenbusEvent)
    }

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
    public var state: XenbusState { published.withLock { $0 } }

    /// Asks for a clean close (unplug); `run()` returns once closed.
    public func requestClose() { continuation.yield(.local(.closeRequested)) }

    /// Undoes a close request: the device may connect again.
    public func requestReconnect() { continuation.yield(.local(.reconnectRequested)) }

    /// Walks the handshake until the device is closed for good: a close was
    /// requested, or the peer's directory vanished. Store errors end it.
    public func run() async throws {
        var machine = role == .frontend ? Machine.frontend(XenbusFrontend()) : Machine.backend(XenbusBackend())
        let watch = try await store.watchEvents(peerPath + "/" + XenbusKey.state)
        let forwarder = Task { [continuation] in
            for await _ in watch { continuation.yield(.peerChanged) }
        }
        defer { forwarder.cancel() }
        try await perform(machine.start(), &machine)
        for await input in inputs {
            switch input {
            case .peerChanged:
                try await perform(machine.handle(.peerState(try await peerState())), &machine)
            case .local(let event):
                try await perform(machine.handle(event), &machine)
                // The machines act on the peer only when its reading is fresh.
                try await perform(machine.handle(.peerState(try await peerState())), &machine)
            }
            if machine.isFinished { break }
        }
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
        }
    }

    private func perform(_ actions: [XenbusAction], _ machine: inout Machine) async throws {
        var queue = actions[...]
        while let action = queue.popFirst() {
            switch action {
            case .publish(let s):
                logger.debug("\(role) \(path): \(s)")
                try await store.write(path + "/" + XenbusKey.state, s.xenstoreValue)
                published.withLock { $0 = s }
            case .prepare:
                if await hook("prepare", driver.prepare) {
                    queue += machine.handle(.resourcesReady)
                    queue += machine.handle(.peerState(try await peerState()))
                } else {
                    queue.removeAll()
                    queue += machine.handle(.closeRequested)
                    queue += machine.handle(.peerState(try await peerState()))
                }
            case .connect:
                if await !hook("connect", driver.connect) {
                    // The rest of this batch assumed a connection (it publishes
                    // Connected): drop it, so the peer never sees Connected.
                    queue.removeAll()
                    queue += machine.handle(.connectRefused)
                    queue += machine.handle(.peerState(try await peerState()))
                }
            case .disconnect:
                await driver.disconnect()
            }
        }
    }

    /// Runs a driver hook; on failure records the reason in `error` and says so.
    private func hook(_ name: String, _ body: () async throws -> Void) async -> Bool {
        do {
            try await body()
            return true
        } catch {
            logger.error("\(role) \(path): \(name) failed: \(error)")
            try? await store.write(path + "/error", "\(name): \(error)")
            return false
        }
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
