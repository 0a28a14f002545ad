import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
import XenStore
import XenStoreServer

/// The toolstack layout and feature helpers against a real server, with the frontend and
/// backend speaking for their own domains.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct ToolstackTests {
    let fe = DomainID(5)
    let be = DomainID(2)

    func server() throws -> (XenStoreServer, String, String, String) {
        let base = "/tmp/xb-\(UUID().uuidString.prefix(8))"
        var logger = Logger(label: "xb-test")
        logger.logLevel = .critical
        let s = XenStoreServer(
            socketPath: base + ".sock", extraSockets: [(base + "-fe.sock", fe), (base + "-be.sock", be)], logger: logger)
        try s.start()
        return (s, base + ".sock", base + "-fe.sock", base + "-be.sock")
    }

    @Test func createLaysOutBothHalvesWithTheRightPermissions() async throws {
        let (s, dom0Path, fePath, bePath) = try server()
        try await withCleanup {
            let dom0 = try XenStoreClient(socketPath: dom0Path)
            let feClient = try XenStoreClient(socketPath: fePath)
            let beClient = try XenStoreClient(socketPath: bePath)
            try await XenbusToolstack.createDomainHome(fe, on: dom0)
            try await XenbusToolstack.createDomainHome(be, on: dom0)
            let dev = XenbusDevice(type: "vbd", id: 51712, frontend: fe, backend: be)
            #expect(dev.frontendPath == "/local/domain/5/device/vbd/51712")
            #expect(dev.backendPath == "/local/domain/2/backend/vbd/5/51712")
            try await XenbusToolstack.create(dev, on: dom0, backendKeys: ["params": "/dev/null"])

            #expect(try await dom0.read(dev.frontendPath + "/backend") == dev.backendPath)
            #expect(try await dom0.read(dev.frontendPath + "/backend-id") == "2")
            #expect(try await dom0.read(dev.frontendPath + "/state") == "1")
            #expect(try await dom0.read(dev.backendPath + "/frontend") == dev.frontendPath)
            #expect(try await dom0.read(dev.backendPath + "/frontend-id") == "5")
            #expect(try await dom0.read(dev.backendPath + "/online") == "1")
            #expect(try await dom0.read(dev.backendPath + "/state") == "1")
            #expect(try await dom0.permissions(dev.frontendPath).strings == ["n5", "r2"])
            #expect(try await dom0.permissions(dev.backendPath).strings == ["n2", "r5"])
            #expect(try await dom0.permissions(dev.frontendPath + "/state").strings == ["n5", "r2"])
            // Class directories made here belong to the domain that enumerates them; one that
            // was there already keeps what it had.
            #expect(try await dom0.permissions("/local/domain/5/device/vbd").strings == ["n5"])
            #expect(try await dom0.permissions("/local/domain/2/backend/vbd/5").strings == ["n2"])
            try await dom0.setPermissions("/local/domain/5/device/vbd", XenStorePermissions(owner: fe, grants: [.init(.read, be)]))
            let second = XenbusDevice(type: "vbd", id: 51728, frontend: fe, backend: be)
            try await XenbusToolstack.create(second, on: dom0)
            #expect(try await dom0.permissions("/local/domain/5/device/vbd").strings == ["n5", "r2"])
            #expect(try await dom0.permissions(second.frontendPath).strings == ["n5", "r2"])
            try await XenbusToolstack.remove(second, on: dom0)

            // The frontend finds its device relative to its home, reads the backend, writes only its own side.
            #expect(try await feClient.directory("device/vbd") == ["51712"])
            #expect(try await feClient.read("device/vbd/51712/backend") == dev.backendPath)
            #expect(try await feClient.read(dev.backendPath + "/params") == "/dev/null")
            try await feClient.write("device/vbd/51712/ring-ref", "8")
            await #expect(throws: XenStoreError.self) { try await feClient.write(dev.backendPath + "/state", "4") }
            // The backend reads the frontend's keys and writes its own.
            #expect(try await beClient.read(dev.frontendPath + "/ring-ref") == "8")
            try await beClient.writeState(dev.backendPath, .initWait)
            await #expect(throws: XenStoreError.self) { try await beClient.write(dev.frontendPath + "/state", "4") }
            // A third domain sees nothing.
            await #expect(throws: XenStoreError.self) { try await XenbusToolstack.create(dev, on: dom0) }

            try await XenbusToolstack.remove(dev, on: dom0)
            #expect(try await dom0.exists(dev.frontendPath) == false)
            #expect(try await dom0.exists(dev.backendPath) == false)
        } cleanup: {
            await stopOffThePool(s)
        }
    }

    @Test func readersUseDefaultsOnlyForMissingKeysAndRefuseMalformedOnes() async throws {
        let (s, dom0Path, _, _) = try server()
        try await withCleanup {
            let c = try XenStoreClient(socketPath: dom0Path)
            let dir = "/local/domain/0/backend/vbd/5/1"
            try await c.writeFeature(dir, XenbusKey.featureFlushCache, true)
            try await c.writeFeature(dir, XenbusKey.featureDiscard, false)
            try await c.write(dir + "/" + XenbusKey.featurePersistent, "yes")
            try await c.writeUnsigned(dir, XenbusKey.maxRingPageOrder, 4)
            try await c.write(dir + "/" + XenbusKey.sectors, "12x")
            #expect(try await c.read(dir + "/feature-flush-cache") == "1")
            #expect(try await c.readFeature(dir, XenbusKey.featureFlushCache) == true)
            #expect(try await c.readFeature(dir, XenbusKey.featureDiscard, default: true) == false)
            #expect(try await c.readFeature(dir, XenbusKey.featureBarrier) == false)
            await #expect(throws: XenstoreValueError(.malformed, key: dir + "/feature-persistent", value: "yes", expected: "0 or 1")) {
                try await c.readFeature(dir, XenbusKey.featurePersistent, default: true)
            }
            #expect(try await c.readNumber(dir, XenbusKey.maxRingPageOrder, in: UInt32(0)...4) == 4)
            await #expect(throws: XenstoreValueError.self) { try await c.readNumber(dir, XenbusKey.maxRingPageOrder, in: UInt32(0)...3) }
            await #expect(throws: XenstoreValueError.self) { try await c.readNumber(dir, XenbusKey.sectors, in: UInt64(0)...UInt64.max, default: 7) }
            #expect(try await c.readNumber(dir, "missing", in: UInt64(0)...UInt64.max, default: 7) == 7)
            await #expect(throws: XenstoreValueError(.missing, key: dir + "/ring-ref", value: nil, expected: "a grant reference")) {
                try await c.readGrantRef(dir, XenbusKey.ringRef)
            }
            #expect(try await c.readChoice(dir, XenbusKey.mode, among: ["r", "w"], default: "w") == "w")
            try await c.writeState(dir, .connected)
            #expect(try await c.readState(dir) == .connected)
            try await c.write(dir + "/state", "42")
            await #expect(throws: XenstoreValueError.self) { try await c.readState(dir) }
            try await c.rm(dir + "/state")
            #expect(try await c.readState(dir) == nil)
        } cleanup: {
            await stopOffThePool(s)
        }
    }

    /// Both machines driven over the store by watch events, as drivers will.
    @Test func handshakeOverTheStoreConnects() async throws {
        let (s, dom0Path, fePath, bePath) = try server()
        try await withCleanup {
            let dom0 = try XenStoreClient(socketPath: dom0Path)
            try await XenbusToolstack.createDomainHome(fe, on: dom0)
            try await XenbusToolstack.createDomainHome(be, on: dom0)
            let dev = XenbusDevice(type: "vif", id: 0, frontend: fe, backend: be)
            try await XenbusToolstack.create(dev, on: dom0)
            let feClient = try XenStoreClient(socketPath: fePath)
            let beClient = try XenStoreClient(socketPath: bePath)

            try await withTimeout(10) {
                try await withThrowingTaskGroup(of: Void.self) { g in
                    g.addTask {
                        try await drive(XenbusFrontend(), feClient, own: dev.frontendPath, peer: dev.backendPath, until: .connected)
                    }
                    g.addTask {
                        try await drive(XenbusBackend(), beClient, own: dev.backendPath, peer: dev.frontendPath, until: .connected)
                    }
                    try await g.waitForAll()
                }
            }
            #expect(try await dom0.readState(dev.frontendPath) == .connected)
            #expect(try await dom0.readState(dev.backendPath) == .connected)
            #expect(try await beClient.read(dev.frontendPath + "/ring-ref") == "9")
        } cleanup: {
            await stopOffThePool(s)
        }
    }
}

/// Either side's machine, for the test driver.
protocol HandshakeMachine: Sendable {
    mutating func start() -> [XenbusAction]
    mutating func handle(_ event: XenbusEvent) -> [XenbusAction]
    var published: XenbusState { get }
}
extension XenbusFrontend: HandshakeMachine {}
extension XenbusBackend: HandshakeMachine {}

/// Runs one side over the store until it has published `target`: performs the machine's
/// actions and feeds it the peer's state on every watch event, as a driver does.
func drive<M: HandshakeMachine>(
    _ machine: M, _ client: XenStoreClient, own: String, peer: String, until target: XenbusState
) async throws {
    var m = machine
    let w = try await client.watch(peer + "/state")
    defer { w.cancel() }
    var events = w.makeAsyncIterator()
    var pending = m.start()
    while true {
        while !pending.isEmpty {
            switch pending.removeFirst() {
            case .publish(let st):
                try await client.writeState(own, st)
            case .prepare:
                try await client.write(own + "/ring-ref", "9")
                pending += m.handle(.resourcesReady)
                pending += m.handle(.peerState(try await client.readState(peer)))
            case .connect, .disconnect:
                break
            case .readPeer:
                pending += m.handle(.peerState(try await client.readState(peer)))
            }
        }
        if m.published == target { return }
        guard await events.next() != nil else { throw XenStoreError(.closed, "watch ended") }
        pending += m.handle(.peerState(try await client.readState(peer)))
    }
}

