import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
import XenABI
import XenLocks
@testable import XenBus
@testable import XenStore
import XenStoreServer

/// Records what the handshake asked of it; can be told to fail a hook, and what its
/// prepare leaves to write.
final class RecordingDriver: XenbusDeviceDriver {
    let calls = Mutex<[String]>([])
    let failConnect: Bool
    let writes: XenbusWrites
    init(failConnect: Bool = false, writes: XenbusWrites = .empty) {
        self.failConnect = failConnect
        self.writes = writes
    }
    func prepare() async throws -> XenbusWrites {
        calls.withLock { $0.append("prepare") }
        return writes
    }
    /// Run inside `connect`, before it returns.
    let duringConnect = Mutex<(@Sendable () async -> Void)?>(nil)
    func connect() async throws {
        calls.withLock { $0.append("connect") }
        if let during = duringConnect.withLock({ $0 }) { await during() }
        if failConnect { throw XenStoreError(.invalid, "bad ring-ref") }
    }
    func disconnect() async { calls.withLock { $0.append("disconnect") } }
    var log: [String] { calls.withLock { $0 } }
}

/// Both ends of a device on one store, each through its own connection as its domain.
struct EndpointPair {
    let server: XenStoreServer
    let socketPath: String
    let device = XenbusDevice(type: "vif", id: 0, frontend: DomainID(1))
    let frontend: XenbusEndpoint
    let backend: XenbusEndpoint

    init(frontendDriver: RecordingDriver, backendDriver: RecordingDriver,
         frontendStore: (XenStoreClient) -> any XenStoreConnection = { $0 }) async throws {
        let base = "/tmp/xb-\(UUID().uuidString.prefix(8))"
        socketPath = base + ".sock"
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-d1.sock", DomainID(1))], logger: logger)
        try server.start()
        let dom0 = try XenStoreClient(socketPath: base + ".sock")
        try await XenbusToolstack.createDomainHome(DomainID(1), on: dom0)
        try await XenbusToolstack.create(device, on: dom0)
        let guest = try XenStoreClient(socketPath: base + "-d1.sock")
        frontend = XenbusEndpoint(role: .frontend, store: frontendStore(guest), path: device.frontendPath, peerPath: device.backendPath,
                                  driver: frontendDriver, logger: logger)
        backend = XenbusEndpoint(role: .backend, store: dom0, path: device.backendPath, peerPath: device.frontendPath,
                                 driver: backendDriver, logger: logger)
    }
}

/// A connection that records the requests sent through it (inside a transaction too) and
/// holds a transaction's read of `heldPath` until a write of `writtenPath` has been sent,
/// so an endpoint that waits for the read before it writes shows as a wait that ran out (a
/// bound, not a measurement: the write either comes while the read is held or never does).
final class RecordingStore: XenStoreConnection {
    struct Sent: Sendable {
        /// Which of this connection's transactions (counted from 1), nil outside one.
        var transaction: Int?
        var inTransaction: Bool { transaction != nil }
        var type: XenStoreMessageType
        var path: String
        var value: String
    }
    let inner: XenStoreClient
    let heldPath: String
    let writtenPath: String
    private let sent = Locked<[Sent]>([])
    private let held = Locked((reads: 0, ranOut: 0))
    private let transactions = Locked(0)
    init(_ inner: XenStoreClient, holding heldPath: String, until writtenPath: String) {
        self.inner = inner
        self.heldPath = heldPath
        self.writtenPath = writtenPath
    }
    var log: [Sent] { sent.withLock { $0 } }
    var heldReads: (reads: Int, ranOut: Int) { held.withLock { $0 } }
    /// Transactions whose start was answered.
    var transactionsOpened: Int { transactions.withLock { $0 } }

    func send(_ type: XenStoreMessageType, _ payload: [UInt8], transaction: (any XenStoreOperations)?,
              number: Int? = nil) async throws(XenStoreError) -> XenStoreMessage {
        let parts = payload.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(decoding: parts.first ?? [], as: UTF8.self)
        let value = parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : ""
        sent.withLock { $0.append(Sent(transaction: number, type: type, path: path, value: value)) }
        if let transaction {
            if type == .read && path == heldPath {
                // One write a held read: the write of this transaction, sent before or after it.
                let reads = held.withLock { h in
                    h.reads += 1
                    return h.reads
                }
                var written = false
                for _ in 0..<6000 {
                    written = sent.withLock { $0.filter { $0.type == .write && $0.path == writtenPath }.count >= reads }
                    if written { break }
                    try? await Task.sleep(for: .milliseconds(5))
                }
                if !written { held.withLock { $0.ranOut += 1 } }
            }
            return try await transaction.request(type, payload: payload)
        }
        return try await inner.request(type, payload: payload)
    }
    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        try await send(type, payload, transaction: nil)
    }
    func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        try await inner.watchEvents(path)
    }
    func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await inner.inTransaction { tx in
            let number = transactions.withLock { n in
                n += 1
                return n
            }
            return try await body(Recorded(store: self, tx: tx, number: number))
        }
    }
    struct Recorded: XenStoreOperations {
        let store: RecordingStore
        let tx: any XenStoreOperations
        let number: Int
        func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
            try await store.send(type, payload, transaction: tx, number: number)
        }
    }
}

@Suite(.timeLimit(.minutes(5)))
struct XenbusEndpointTests {
    /// An endpoint pair whose frontend's requests go through a ``RecordingStore`` that holds
    /// each transaction's read of the directory's `backend` key until a write of `state`.
    func recordedPair(_ fe: RecordingDriver, _ be: RecordingDriver) async throws -> (EndpointPair, RecordingStore, String) {
        var recorder: RecordingStore?
        let dir = XenbusDevice(type: "vif", id: 0, frontend: DomainID(1)).frontendPath
        let statePath = dir + "/state"
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be) { client in
            let r = RecordingStore(client, holding: dir + "/backend", until: statePath)
            recorder = r
            return r
        }
        return (pair, try #require(recorder), statePath)
    }

    /// A state change is three round trips in turn (after a resume each is downtime): the
    /// check that the directory exists (its `backend` key) goes out with the write, in one
    /// transaction. And the Initialising the toolstack wrote when it made the device is
    /// read, not written again.
    @Test func aStateChangeSendsItsCheckWithItsWriteAndInitialisingIsNotWrittenTwice() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let (pair, store, statePath) = try await recordedPair(fe, be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(120))
        try await pair.backend.connected(timeout: .seconds(120))
        let writes = store.log.filter { $0.type == .write && $0.path == statePath }
        #expect(writes.map(\.value) == [XenbusState.initialised.xenstoreValue, XenbusState.connected.xenstoreValue])
        #expect(writes.allSatisfy { $0.inTransaction })
        #expect(store.heldReads.reads == 2)
        #expect(store.heldReads.ranOut == 0, "a state write waited for its existence check")
        pair.backend.requestClose()
        pair.frontend.requestClose()
        try await withTimeout(60) { try await beRun.value }
        try await withTimeout(60) { try await feRun.value }
        await stopOffThePool(pair.server)
    }

    /// What a frontend's prepare leaves to write is made in the transaction that says
    /// Initialised: the backend sees the keys and the state together, and a resumed
    /// guest's downtime has one transaction where it had two.
    @Test func preparedKeysAreWrittenInTheTransactionThatSaysInitialised() async throws {
        let dir = XenbusDevice(type: "vif", id: 0, frontend: DomainID(1)).frontendPath
        let fe = RecordingDriver(writes: .entries([(dir + "/ring-ref", "8"), (dir + "/event-channel", "3")]))
        let be = RecordingDriver()
        let (pair, store, statePath) = try await recordedPair(fe, be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(120))
        try await pair.backend.connected(timeout: .seconds(120))
        let log = store.log
        let initialised = try #require(log.first { $0.type == .write && $0.path == statePath && $0.value == XenbusState.initialised.xenstoreValue })
        let keys = log.filter { $0.type == .write && $0.path != statePath }
        #expect(keys.map(\.path).sorted() == [dir + "/event-channel", dir + "/ring-ref"])
        #expect(initialised.transaction != nil && keys.allSatisfy { $0.transaction == initialised.transaction })
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        #expect(try await dom0.read(dir + "/ring-ref") == "8")
        pair.backend.requestClose()
        pair.frontend.requestClose()
        try await withTimeout(60) { try await beRun.value }
        try await withTimeout(60) { try await feRun.value }
        await stopOffThePool(pair.server)
    }

    /// The transaction that publishes Connected opens while the connect hook runs: its
    /// start is one round trip the hook hides. The hook waits (bounded) for a transaction
    /// opened after the frontend's one so far (the Initialised one); an endpoint that opens
    /// it only after the hook shows as a wait that ran out.
    @Test func theTransactionAfterAHookOpensWhileTheHookRuns() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let (pair, store, _) = try await recordedPair(fe, be)
        let ranOut = Locked(false)
        fe.duringConnect.withLock {
            $0 = {
                var opened = false
                for _ in 0..<2000 {
                    opened = store.transactionsOpened >= 2
                    if opened { break }
                    try? await Task.sleep(for: .milliseconds(5))
                }
                if !opened { ranOut.withLock { $0 = true } }
            }
        }
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(120))
        #expect(store.transactionsOpened == 2)
        #expect(!ranOut.withLock { $0 }, "the publishing transaction opened only after the hook")
        pair.backend.requestClose()
        pair.frontend.requestClose()
        try await withTimeout(60) { try await beRun.value }
        try await withTimeout(60) { try await feRun.value }
        await stopOffThePool(pair.server)
    }

    /// Writes the store refuses (here: a guest writing into dom0's directory) make nothing
    /// of their transaction: the frontend never says Initialised, names the reason in its
    /// `error` key, lets go of what it prepared and closes.
    @Test func preparedKeysTheStoreRefusesCloseTheDeviceWithNothingWritten() async throws {
        let fe = RecordingDriver(writes: .entries([("/local/domain/0/stolen", "1")]))
        let be = RecordingDriver()
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await withTimeout(60) { try await feRun.value }
        #expect(fe.log == ["prepare", "disconnect"])
        #expect(pair.frontend.state == .closed)
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        #expect(try await dom0.read(pair.device.frontendPath + "/state") == XenbusState.closed.xenstoreValue)
        let error = try await dom0.read(pair.device.frontendPath + "/error")
        #expect(error.hasPrefix("prepare: "), "\(error)")
        #expect(try await dom0.readIfPresent("/local/domain/0/stolen") == nil)
        pair.backend.requestClose()
        try await withTimeout(60) { try await beRun.value }
        await stopOffThePool(pair.server)
    }

    /// After a resumed suspend the frontend's `state` is not known (on a migration's
    /// destination the toolstack made the device anew, Initialising): it is read, and the
    /// new session starts without writing Initialising again.
    @Test func aResumedFrontendReadsItsStateBeforeWritingIt() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let (pair, store, statePath) = try await recordedPair(fe, be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(120))
        try await pair.backend.connected(timeout: .seconds(120))

        // As a restore does: the device made anew while the guest is paused, a new backend.
        await pair.frontend.suspend()
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        try await XenbusToolstack.remove(pair.device, on: dom0)
        try await withTimeout(60) { try await beRun.value }
        try await XenbusToolstack.create(pair.device, on: dom0)
        let be2 = RecordingDriver()
        let backend2 = XenbusEndpoint(role: .backend, store: dom0, path: pair.device.backendPath,
                                      peerPath: pair.device.frontendPath, driver: be2)
        let be2Run = Task { try await backend2.run() }
        let before = store.log.count
        await pair.frontend.resume(.resumed)
        let again = await eventually { pair.frontend.state == .connected && be2.log == ["prepare", "connect"] }
        #expect(again, "frontend \(pair.frontend.state), backend \(backend2.state)")
        let writes = store.log[before...].filter { $0.type == .write && $0.path == statePath }
        #expect(writes.map(\.value) == [XenbusState.initialised.xenstoreValue, XenbusState.connected.xenstoreValue])
        #expect(fe.log == ["prepare", "connect", "prepare", "connect"])
        backend2.requestClose()
        pair.frontend.requestClose()
        try await withTimeout(60) { try await be2Run.value }
        try await withTimeout(60) { try await feRun.value }
        await stopOffThePool(pair.server)
    }

    @Test func bothSidesConnectThenCloseOnUnplug() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(60))
        try await pair.backend.connected(timeout: .seconds(60))
        #expect(fe.log == ["prepare", "connect"])
        #expect(be.log == ["prepare", "connect"])

        // The backend is unplugged: it closes for good; the frontend releases
        // its resources and offers a new session to a future backend.
        pair.backend.requestClose()
        let settled = await eventually { pair.frontend.state == .initialising && pair.backend.state == .closed }
        #expect(settled, "frontend \(pair.frontend.state) backend \(pair.backend.state)")
        try await beRun.value
        #expect(be.log == ["prepare", "connect", "disconnect"])
        #expect(fe.log == ["prepare", "connect", "disconnect"])
        pair.frontend.requestClose()
        try await feRun.value
        #expect(pair.frontend.state == .closed)
        await stopOffThePool(pair.server)
    }

    /// The toolstack removed the device (both directories) while the endpoints still ran:
    /// their last state changes must not bring the directories back, as Linux's
    /// xenbus_switch_state writes only while the state node exists.
    @Test func stateChangesAfterRemovalDoNotRecreateTheDevice() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(60))
        try await pair.backend.connected(timeout: .seconds(60))
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        try await XenbusToolstack.remove(pair.device, on: dom0)
        pair.backend.requestClose()
        pair.frontend.requestClose()
        try await beRun.value
        try await feRun.value
        #expect(try await !dom0.exists(pair.device.backendPath), "the backend's late state write recreated its directory")
        #expect(try await !dom0.exists(pair.device.frontendPath), "the frontend's late state write recreated its directory")
        await stopOffThePool(pair.server)
    }

    /// A refused connect closes that device with its reason and is not retried: the
    /// backend holds Closing, so the frontend (which would answer Closed with a new
    /// session on the same keys) stays Closed, and `connect` ran once.
    @Test func aFailingHookClosesThatDeviceWithItsReasonAndIsNotRetried() async throws {
        let fe = RecordingDriver(), be = RecordingDriver(failConnect: true)
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        let settled = await eventually { pair.backend.state == .closing && pair.frontend.state == .closed }
        #expect(settled, "frontend \(pair.frontend.state) backend \(pair.backend.state)")
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        let error = try await dom0.readIfPresent(pair.device.backendPath + "/error")
        #expect(error?.contains("connect: ") == true)
        #expect(!fe.log.contains("connect"))
        #expect(be.log.filter { $0 == "connect" }.count == 1)
        // An unplug still ends both.
        pair.backend.requestClose()
        try await withTimeout(20) { try await beRun.value }
        pair.frontend.requestClose()
        try await withTimeout(20) { try await feRun.value }
        #expect(be.log.filter { $0 == "connect" }.count == 1)
        await stopOffThePool(pair.server)
    }

    /// A peer's `state` that is no XenbusState ("+4": Swift's own UInt32("+4") would take
    /// it) is the peer gone: that device closes with the reason in its `error` key.
    @Test func aMalformedPeerStateClosesThatDeviceWithItsReason() async throws {
        let fe = RecordingDriver(), be = RecordingDriver()
        let pair = try await EndpointPair(frontendDriver: fe, backendDriver: be)
        let feRun = Task { try await pair.frontend.run() }
        let beRun = Task { try await pair.backend.run() }
        try await pair.frontend.connected(timeout: .seconds(60))
        try await pair.backend.connected(timeout: .seconds(60))
        let guest = try XenStoreClient(socketPath: String(pair.socketPath.dropLast(".sock".count)) + "-d1.sock")
        try await guest.write(pair.device.frontendPath + "/state", "+4")
        try await withTimeout(20) { try await beRun.value }
        #expect(pair.backend.state == .closed)
        #expect(be.log == ["prepare", "connect", "disconnect"])
        let dom0 = try XenStoreClient(socketPath: pair.socketPath)
        let error = try await dom0.readIfPresent(pair.device.backendPath + "/error")
        #expect(error == "state: \(pair.device.frontendPath)/state = \"+4\" (malformed): expected a decimal in 0...8")
        pair.frontend.requestClose()
        try await withTimeout(20) { try await feRun.value }
        await stopOffThePool(pair.server)
    }

    /// `connected(timeout:)` says why it gave up: the time passed, or the endpoint ended first.
    @Test func waitingForConnectedEndsWithAReason() async throws {
        let pair = try await EndpointPair(frontendDriver: RecordingDriver(), backendDriver: RecordingDriver())
        // Nobody runs the handshake: only the timeout can end the wait.
        await #expect { try await pair.frontend.connected(timeout: .milliseconds(20)) } throws: {
            ($0 as? XenbusError)?.code == .timedOut
        }
        // Closed before the backend ever ran: the wait ends with the endpoint, not the timeout.
        let feRun = Task { try await pair.frontend.run() }
        pair.frontend.requestClose()
        try await withTimeout(60) { try await feRun.value }
        await #expect { try await pair.frontend.connected(timeout: .seconds(60)) } throws: {
            ($0 as? XenbusError)?.code == .closed
        }
        var states: [XenbusState] = []
        for await s in pair.frontend.states() { states.append(s) }
        #expect(states == [.closed])
        await stopOffThePool(pair.server)
    }
}
