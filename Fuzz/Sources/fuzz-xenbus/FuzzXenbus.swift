// XenBus device set-up with the key values a peer writes: the frontend's keys
// blkback reads in BlockBackendDevice.connect (protocol, multi-queue-num-queues,
// ring-page-order, ring-ref[N], event-channel, queue-N/…, feature-persistent),
// and the XenBus readers every driver reads keys with (readNumber,
// readFeature, readState, all through XenstoreValue), plus the value parsers
// behind them (BlkifABI(protocolName:), XenbusState(xenstoreValue:),
// MACAddress(_:)).
//
// The store is an in-process XenStoreEngine (no server, no socket, no thread);
// the hypervisor is a SimulatedHypervisor with a guest that granted nothing, so
// whatever ring references blkback accepts, mapping them fails before any queue
// thread starts. An async entry is driven to completion with a semaphore.
//
// Input: byte 0 picks the side (even: blkback reading a frontend's keys, odd:
// blkfront reading a backend's), then one byte per key choosing absent / one of
// a list of awkward values / raw bytes from the input. Invariants: no trap; blkback refuses a queue count or
// ring order beyond what it advertised, an unknown protocol, and missing or
// malformed ring keys, and never gets as far as a mapping then; each accessor
// returns exactly what its documentation says for the value written.
import Dispatch
import Logging
import Synchronization
import XenABI
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenBus
import XenHypervisor
import XenNetProtocol
import XenSimulator
import XenStore
import XenStoreServer

/// XenStoreConnection over an in-process engine, speaking as `domain`. Drivers send several
/// requests at once, as a real client allows; the engine is one daemon loop's, so each
/// request takes it under `lock`.
final class EngineStore: XenStoreConnection, @unchecked Sendable {
    let engine: XenStoreEngine
    let domain: DomainID
    private let lock = Mutex(())
    init(engine: XenStoreEngine, domain: DomainID) {
        self.engine = engine
        self.domain = domain
    }
    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        let reply = lock.withLock { _ in
            defer { _ = engine.takeOutbox() }
            return engine.perform(XenStoreMessage(type: type, payload: payload), as: domain)
        }
        if reply.type == .error {
            throw XenStoreError(XenStoreError.Code(rawValue: reply.text), "\(type)")
        }
        return reply
    }
    func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        AsyncStream { $0.finish() }
    }
    func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await body(self)
    }
}

final class Box<T>: @unchecked Sendable { var value: T? }

/// Runs an async body to completion on the caller's thread's behalf.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
    let box = Box<T>()
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        box.value = await body()
        done.signal()
    }
    done.wait()
    return box.value!
}

let hypervisor = SimulatedHypervisor(dom0Frames: 64)
let guest = try! hypervisor.createDomain(frames: 64)
let disk = BlockBackendDisk(byteCount: 1 << 20) { try MemoryStorage(byteCount: 1 << 20) }
let quiet = Logger(label: "fuzz") { _ in SwiftLogNoOpLogHandler() }

let awkward: [String] = [
    "0", "1", "2", "3", "4", "5", "16", "255", "4294967295", "4294967296", "9223372036854775807",
    "9223372036854775808", "18446744073709551615", "18446744073709551616", "-1", "", " 1", "1 ", "+1",
    "0x10", "01", "1\u{0}", "x86_64-abi", "x86_32-abi", "arm-abi", "00:16:3e:00:00:01", "00:16:3E:00:00:0",
    "zz:16:3e:00:00:01", "\u{e9}", "4\n",
]

struct Input {
    var bytes: UnsafeRawBufferPointer
    var at = 0
    mutating func byte() -> UInt8 {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return bytes[at]
    }
    /// nil (absent), one of `awkward`, or up to 15 raw bytes.
    mutating func value() -> [UInt8]? {
        let b = byte()
        if b == 0 { return nil }
        if b < 0x80 { return Array(awkward[Int(b) % awkward.count].utf8) }
        let end = min(bytes.count, at + Int(b & 15))
        defer { at = end }
        return Array(bytes[at..<end])
    }
}

/// What blkfront reads from the backend's directory in prepare and connect.
let backendKeys = [
    "multi-queue-max-queues", "max-ring-page-order", "sectors", "sector-size", "info", "mode",
    "feature-max-indirect-segments", "feature-flush-cache", "feature-barrier", "feature-discard",
]
let guestSharer = try! guest.openGrantSharer()
let blockFrontend = BlockFrontend()
// The smallest pool a queue accepts (one direct request, BLKIF_MAX_SEGMENTS_PER_REQUEST pages, twice).
let frontendOptions = BlockFrontendOptions(queues: 2, ringPageOrder: 1, poolPages: 22)

let frontendKeys = [
    "protocol", "multi-queue-num-queues", "ring-page-order", "ring-ref", "ring-ref0", "ring-ref1", "ring-ref2",
    "ring-ref3", "event-channel", "queue-0/ring-ref", "queue-0/event-channel", "queue-1/ring-ref",
    "queue-1/event-channel", "queue-0/ring-ref0", "queue-0/ring-ref1", "feature-persistent", "state",
]

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let side = bytes.first else { return }
    var input = Input(bytes: UnsafeRawBufferPointer(rebasing: bytes.dropFirst()))
    let engine = XenStoreEngine(logger: quiet)
    let store = EngineStore(engine: engine, domain: .dom0)
    let device = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
    if side & 1 == 1 {
        frontendSide(&input, engine: engine, store: store, device: device)
        return
    }
    let fe = device.frontendPath
    var written: [String: [UInt8]] = [:]
    for key in frontendKeys {
        guard let value = input.value() else { continue }
        let reply = engine.perform(XenStoreMessage(type: .write, payload: Array("\(fe)/\(key)".utf8) + [0] + value), as: .dom0)
        precondition(reply.type == .write, "dom0 could not write \(key)")
        written[key] = value
    }
    _ = engine.takeOutbox()
    // A read's text drops one trailing NUL (replies like XS_READ's carry none).
    let texts = written.mapValues { String(decoding: $0.last == 0 ? $0.dropLast() : $0[...], as: UTF8.self) }
    @Sendable func text(_ key: String) -> String? { texts[key] }

    // The readers, against the checked parser on what was written: a missing key
    // gives the default, anything present parses exactly as XenstoreValue says.
    runBlocking {
        for key in frontendKeys {
            let t = text(key)
            let path = fe + "/" + key
            let number = try? await store.readNumber(fe, key, in: UInt32(1)...4096, default: 7)
            let expectedNumber: UInt32? = t.map { try? XenstoreValue.decimal($0, key: path, in: UInt32(1)...4096) } ?? 7
            precondition(number == expectedNumber, "readNumber \(key)")
            let feature = try? await store.readFeature(fe, key, default: true)
            let expectedFeature: Bool? = t.map { try? XenstoreValue.flag($0, key: path) } ?? true
            precondition(feature == expectedFeature, "readFeature \(key)")
        }
        let state = try? await store.readState(fe)
        let expectedState: XenbusState?? = text("state").map { try? XenstoreValue.state($0, key: fe + "/state") } ?? .some(nil)
        precondition(state == expectedState, "readState")
    }
    for key in frontendKeys {
        guard let t = text(key) else { continue }
        if let abi = BlkifABI(protocolName: t) { precondition(abi.protocolName == t) }
        if let mac = MACAddress(t) { precondition(MACAddress(mac.description) == mac) }
    }

    // blkback's connect on those keys.
    let options = BlockBackendOptions()
    let backend = BlockBackendDevice(device: device, store: store, hypervisor: hypervisor.dom0, disk: disk,
                                     options: options, logger: quiet)
    let outcome: (any Error)? = runBlocking {
        do { try await backend.connect(); return nil } catch { return error }
    }
    guard let outcome else {
        // Only possible if every ring reference named a grant the guest made: it made none.
        preconditionFailure("blkback connected to a guest that granted nothing")
    }
    // A refusal from the keys themselves whenever they are out of what blkback offered.
    let queuesOK = text("multi-queue-num-queues").map {
        (try? XenstoreValue.decimal($0, key: "q", in: UInt32(1)...UInt32(options.maxQueues))) != nil } ?? true
    let orderOK = text("ring-page-order").map {
        (try? XenstoreValue.decimal($0, key: "o", in: UInt32(0)...UInt32(options.maxRingPageOrder))) != nil } ?? true
    let protocolName = text("protocol") ?? BlkifABI.native.protocolName
    if !queuesOK || !orderOK || BlkifABI(protocolName: protocolName) == nil {
        precondition(outcome is BlockBackendError || outcome is XenstoreValueError,
                     "bad keys refused with \(outcome), not a checked refusal")
    }
    precondition(backend.queues.isEmpty)
}

/// blkfront's prepare and connect on the keys a backend wrote (the other side).
func frontendSide(_ input: inout Input, engine: XenStoreEngine, store: EngineStore, device: XenbusDevice) {
    var backendWritten: [String: String] = [:]
    for key in backendKeys {
        guard let value = input.value() else { continue }
        let reply = engine.perform(
            XenStoreMessage(type: .write, payload: Array("\(device.backendPath)/\(key)".utf8) + [0] + value), as: .dom0)
        precondition(reply.type == .write, "dom0 could not write \(key)")
        backendWritten[key] = String(decoding: value.last == 0 ? value.dropLast() : value[...], as: UTF8.self)
    }
    _ = engine.takeOutbox()
    let driver = BlockFrontendDriver(device: device, store: store, hypervisor: guest, sharer: guestSharer,
                                     frontend: blockFrontend, options: frontendOptions)
    let connected: Bool = runBlocking {
        defer { _ = driver }
        do {
            try await driver.prepare().apply(to: store)
            try await driver.connect()
            return true
        } catch {
            return false
        }
    }
    if connected {
        guard let info = blockFrontend.info else { preconditionFailure("connected without device info") }
        precondition(info.maxIndirectSegments <= BlockDeviceLimits.maxIndirectSegmentsLimit)
        precondition(backendWritten["sectors"].flatMap { UInt64($0) } == info.sectors, "sectors \(info.sectors)")
        precondition(driver.sharedResources.count <= frontendOptions.queues)
    }
    runBlocking { await driver.disconnect() }
    precondition(driver.sharedResources.isEmpty)
}
