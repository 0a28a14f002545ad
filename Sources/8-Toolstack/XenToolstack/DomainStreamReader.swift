import CXen
import Foundation
import Glibc
import XenABI
import XenBus
import XenMigrationStream
import XenSimulatorClient
import XenStore

/// Creates a domain from a migration stream on this host, as libxc's restore does in
/// dom0: the domain keeps its id (refused with `EEXIST` if taken here), its pages and
/// share pools land at the same frames, its grant table and store subtree are
/// written back, and each device's backend directory is created again (state
/// Initialising, both halves, as a toolstack creating the device does), so this
/// host's `xenpv backend` serves it. Anything wrong in the stream (a bad record, a
/// frame outside the domain, a missing end) drops what was created.
public final class DomainStreamReader: Sendable {
    let hypervisor: RemoteHypervisor
    /// Frontend keys the toolstack wrote when it created a device; the guest writes the rest again.
    static let toolstackFrontendKeys: Set<String> = ["handle", "mac", "virtual-device", "device-type"]

    /// A reader restoring through `hypervisor` (joined as dom0 to the destination).
    public init(hypervisor: RemoteHypervisor) { self.hypervisor = hypervisor }

    /// What a finished restore gives: the domain and the token its process joins with.
    public struct Restored: Sendable {
        /// The restored domain's id (the source's).
        public let domain: DomainID
        /// The token its process presents to join it.
        public let token: DomainToken
        /// Its name from the stream.
        public let name: String
    }

    /// Reads the whole stream from `input` (until its end record) and finishes the restore.
    public func restore(from input: Int32) async throws -> Restored {
        let read = try readStream(from: input)
        return try await complete(read)
    }

    /// What ``readStream(from:)`` gathered: the domain's memory and table are in place;
    /// its store and devices wait for ``complete(_:)``.
    public struct ReadStream: @unchecked Sendable {
        // @unchecked: handed from the reading thread to the completing task, then used there alone.
        let view: DomainStateView
        let info: MigrationDomainInfo
        let store: [MigrationStoreEntry]
        let devices: [MigrationDevice]
        /// Devices the stream named ahead of the memory, and their creation, under way.
        let early: [MigrationDevice]
        let earlyMade: Task<Void, any Error>?
    }

    /// The blocking half (run it on a thread of its own): reads the stream to its end
    /// record into a new domain. The domain is dropped if this throws.
    public func readStream(from input: Int32) throws -> ReadStream {
        var decoder = MigrationStreamDecoder()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var state: (view: DomainStateView, info: MigrationDomainInfo)?
        var store: [MigrationStoreEntry] = []
        var devices: [MigrationDevice] = []
        var early: [MigrationDevice] = []
        var earlyMade: Task<Void, any Error>?
        // The devices named ahead, made one after the other in one task, once the first
        // record that is not one of them comes (pages, usually): none waits for the pages.
        func makeEarly() {
            guard earlyMade == nil, !early.isEmpty, let id = state?.view.domain else { return }
            let (devices, store) = (early, hypervisor.store)
            earlyMade = Task { for d in devices { try await Self.make(d, frontend: id, on: store, frontendKeys: [:]) } }
        }
        do {
            reading: while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DomainTransferError("reading the stream: \(String(cString: strerror(errno)))")
                }
                if n == 0 { break }
                decoder.feed(buffer[0..<n])
                while let record = try decoder.next() {
                    if case .device = record {} else { makeEarly() }
                    switch record {
                    case .domain(let info):
                        guard info.frameCount >= 16, info.frameCount <= 262_144, info.grantFrames == 32 else {
                            throw DomainTransferError("the stream's domain has \(info.frameCount) frames and \(info.grantFrames) grant frames; this host takes 16 to 262144 and 32")
                        }
                        state = (try hypervisor.importDomain(info.domain, frames: Int(info.frameCount)), info)
                    case .pages(let batch):
                        guard let view = state?.view else { break }
                        if let f = batch.frames.first(where: { !view.holds($0.rawValue) }) {
                            throw DomainTransferError("the stream names \(f), outside the domain")
                        }
                        try batch.data.withUnsafeBytes { data in try view.write(batch.frames.map(\.rawValue), from: data) }
                    case .grants(let entries):
                        guard let view = state?.view else { break }
                        for e in entries {
                            guard Int(e.ref.rawValue) < view.grantEntries, e.frame.rawValue <= UInt64(UInt32.max) else {
                                throw DomainTransferError("the stream's grant \(e.ref) does not fit the table")
                            }
                            let p = view.table + Int(e.ref.rawValue) * 8
                            p.storeBytes(of: e.grantee.rawValue, toByteOffset: 2, as: UInt16.self)
                            p.storeBytes(of: UInt32(e.frame.rawValue), toByteOffset: 4, as: UInt32.self)
                            p.storeBytes(of: e.flags, as: UInt16.self)
                        }
                    case .eventChannels:
                        // A resumed domain's ports are gone; its drivers bind new ones.
                        break
                    case .store(let entries): store += entries
                    case .device(let d):
                        guard let view = state?.view else { break }
                        if d.type == DomainStreamWriter.sharePoolClass {
                            let keys = Dictionary(d.keys.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
                            guard let g = keys["grantee"].flatMap(UInt16.init), let w = keys["writable"] else {
                                throw DomainTransferError("a share-pool record without grantee or writable")
                            }
                            if !view.pools.contains(where: { $0.first == UInt64(d.id) }) {
                                _ = try hypervisor.importPool(view, first: UInt64(d.id), grantee: DomainID(g), writable: w == "1")
                            }
                        } else {
                            // Names become store path components: one component each, nothing else.
                            guard Self.isComponent(d.type), d.keys.allSatisfy({ Self.isComponent($0.name) }) else {
                                throw DomainTransferError("the stream's device \(d.type.debugDescription) has a name that is not one store path component")
                            }
                            if earlyMade == nil && store.isEmpty && !early.contains(where: { $0.type == d.type && $0.id == d.id }) {
                                // Ahead of the memory (a migration): made while pages stream
                                // in, so this host's backend waits in InitWait when the guest
                                // resumes here. The final record, after the store, says what
                                // the device is at the pause.
                                early.append(d)
                            } else {
                                devices.append(d)
                            }
                        }
                    case .end: break reading
                    }
                }
            }
            try decoder.finish()
            makeEarly()
            guard let (view, info) = state else { throw DomainTransferError("the stream holds no domain") }
            return ReadStream(view: view, info: info, store: store, devices: devices, early: early, earlyMade: earlyMade)
        } catch {
            // Devices being made go with the domain: wait for them first, or one finished
            // after the removal would bring its directories back.
            if let earlyMade { Self.waitFor(earlyMade) }
            if let id = state?.view.domain { try? hypervisor.abortImport(id) }
            if let e = error as? MigrationStreamError { throw DomainTransferError("the stream is not a whole, valid domain: \(e)") }
            throw error
        }
    }

    /// The store and devices of a read stream, then the restore's end: its join token.
    public func complete(_ read: ReadStream) async throws -> Restored {
        do {
            try await read.earlyMade?.value
            try await writeStore(read.view.domain, read.store, read.devices, early: read.early)
            let token = try hypervisor.finishImport(read.view.domain)
            return Restored(domain: read.view.domain, token: token, name: read.info.name)
        } catch {
            _ = await read.earlyMade?.result
            try? hypervisor.abortImport(read.view.domain)
            throw error
        }
    }

    /// Blocks this (reading) thread until `task` is done, for at most 30 s.
    private static func waitFor(_ task: Task<Void, any Error>) {
        let done = DispatchSemaphore(value: 0)
        Task {
            _ = await task.result
            done.signal()
        }
        _ = done.wait(timeout: .now() + 30)
    }

    /// Both halves of device `d` of domain `id`, as a toolstack creating it writes them,
    /// its backend configuration from the stream (the keys a handshake writes left out).
    private static func make(_ d: MigrationDevice, frontend id: DomainID, on store: any XenStoreConnection,
                             frontendKeys: [String: String]) async throws {
        var keys: [String: String] = [:]
        for k in d.keys where ![XenbusKey.state, XenbusKey.frontend, XenbusKey.frontendID, XenbusKey.online].contains(k.name) {
            keys[k.name] = k.value
        }
        try await XenbusToolstack.create(XenbusDevice(type: d.type, id: d.id, frontend: id), on: store,
                                         frontendKeys: frontendKeys, backendKeys: keys)
    }

    /// A store path component: letters, digits, `-` and `_`, 1 to 64 of them.
    static func isComponent(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
        }
    }

    /// The store subtree as it was, devices excepted; each device created again (one made
    /// ahead as it still is gets only the toolstack's frontend keys; one made ahead that
    /// changed or went is removed first).
    private func writeStore(_ id: DomainID, _ entries: [MigrationStoreEntry], _ devices: [MigrationDevice],
                            early: [MigrationDevice]) async throws {
        let store = hypervisor.store
        let home = XenStorePath.home(of: id)
        let deviceDir = home + "/device/"
        var frontendKeys: [String: [String: String]] = [:]
        var nodes: [MigrationStoreEntry] = []
        for e in entries {
            guard e.path == home || e.path.hasPrefix(home + "/") || e.path.hasPrefix("/vm/") else {
                throw DomainTransferError("the stream's store entry \(e.path) is not the domain's")
            }
            if e.path.hasPrefix(deviceDir) {
                // device/TYPE/ID/KEY: kept for the device's creation below.
                let parts = e.path.dropFirst(deviceDir.count).split(separator: "/").map(String.init)
                if parts.count == 3, Self.toolstackFrontendKeys.contains(parts[2]) {
                    frontendKeys["\(parts[0])/\(parts[1])", default: [:]][parts[2]] = String(decoding: e.value, as: UTF8.self)
                }
                continue
            }
            nodes.append(e)
        }
        // The toolstack's keys of each device made ahead as it still is: its directories exist.
        var deviceKeys: [(String, String)] = []
        for d in devices where early.contains(d) {
            let dir = XenbusDevice(type: d.type, id: d.id, frontend: id).frontendPath
            deviceKeys += (frontendKeys["\(d.type)/\(d.id)"] ?? [:]).sorted { $0.key < $1.key }.map { (dir + "/" + $0.key, $0.value) }
        }
        // All at once (in flight together on the one connection): this runs while the
        // guest is paused. A child written before its parent creates the parent, whose
        // own write and permissions follow in its task.
        let keys = deviceKeys
        try await withThrowingTaskGroup(of: Void.self) { group in
            for e in nodes {
                group.addTask {
                    try await store.write(e.path, bytes: e.value)
                    if let perms = XenStorePermissions(strings: e.permissions.split(separator: ",").map(String.init)) {
                        try await store.setPermissions(e.path, perms)
                    }
                }
            }
            if !keys.isEmpty { group.addTask { try await store.writeAll(keys) } }
            try await group.waitForAll()
        }
        for e in early where !devices.contains(e) {
            try await XenbusToolstack.remove(XenbusDevice(type: e.type, id: e.id, frontend: id), on: store)
        }
        for d in devices where !early.contains(d) {
            try await Self.make(d, frontend: id, on: store, frontendKeys: frontendKeys["\(d.type)/\(d.id)"] ?? [:])
        }
    }
}
