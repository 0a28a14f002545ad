import XenABI
import XenLocks
import XenBus
import XenMigrationStream
import XenStore

/// What a migration stream carries of a domain from the store: its subtree
/// (`/local/domain/D` and its `/vm` entry) and its devices' backend directories.
struct DomainStoreState: Sendable {
    var entries: [MigrationStoreEntry] = []
    var devices: [MigrationDevice] = []

    /// Where the toolstack asks for the pause and the guest acknowledges it (it writes
    /// `shutdown`, the toolstack may create it): read apart from a read-ahead, which it
    /// would always spoil.
    static func control(of domain: DomainID) -> String { XenStorePath.home(of: domain) + "/control" }

    /// Reads `domain`'s state through `store` (the connection, or a transaction), the
    /// nodes in `apart` left out.
    static func read(_ domain: DomainID, on store: any XenStoreOperations, apart: Set<String> = []) async throws -> DomainStoreState {
        let home = XenStorePath.home(of: domain)
        var state = DomainStoreState()
        state.entries = try await subtree(home, on: store, apart: apart)
        if let vm = try? await store.read(home + "/vm"), vm.hasPrefix("/vm/") { state.entries += try await subtree(vm, on: store, apart: apart) }
        let backends = "/local/domain/0/backend"
        for type in (try? await store.directory(backends)) ?? [] {
            let dir = "\(backends)/\(type)/\(domain.rawValue)"
            for dev in (try? await store.directory(dir)) ?? [] {
                guard let id = UInt32(dev) else { continue }
                let names = (try? await store.directory("\(dir)/\(dev)")) ?? []
                // Every key's read in flight at once: this may run while the guest is paused.
                let values = await store.readAllIfPresent(names.map { "\(dir)/\(dev)/\($0)" })
                // A key that went or failed to read is left out, as before.
                let keys = zip(names, values).compactMap { k, v in (try? v.get()).map { MigrationDevice.Key(k, $0) } }
                state.devices.append(MigrationDevice(type: type, id: id, keys: Array(keys.prefix(MigrationLimits.maximumDeviceKeys))))
            }
        }
        return state
    }

    /// Every node under `path` (itself included), parents first, with its permissions;
    /// a node in `apart` is listed as a child but not read (its entry is left out).
    /// Each level's nodes are read at once (requests in flight together on the one
    /// connection): this may run while the guest is paused.
    static func subtree(_ path: String, on store: any XenStoreOperations, apart: Set<String> = []) async throws -> [MigrationStoreEntry] {
        var out: [MigrationStoreEntry] = []
        var level = [path]
        while !level.isEmpty {
            let found = await withTaskGroup(of: (Int, MigrationStoreEntry?, [String]).self) { group in
                for (i, p) in level.enumerated() where !apart.contains(p) {
                    group.addTask {
                        async let value = try? await store.readBytes(p)
                        async let perms = try? await store.permissions(p)
                        async let children = (try? await store.directory(p)) ?? []
                        guard let v = await value else { return (i, nil, []) }
                        let entry = MigrationStoreEntry(path: p, value: v, permissions: await perms?.strings.joined(separator: ",") ?? "")
                        return (i, entry, await children.map { p + "/" + $0 })
                    }
                }
                var all: [(Int, MigrationStoreEntry?, [String])] = []
                for await r in group { all.append(r) }
                return all.sorted { $0.0 < $1.0 }
            }
            out += found.compactMap(\.1)
            level = found.flatMap(\.2)
        }
        return out
    }
}

/// A domain's store state read before the pause, inside a transaction that stays open
/// until the pause and is committed then: the store fails that commit (`EAGAIN`) if any
/// node read meanwhile changed, and the state is read again, paused. So the pause costs
/// one round trip for it instead of one per level of the subtree and per device, and what
/// is sent is the store as it was at the commit, as if read then.
final class DomainStoreReadAhead: Sendable {
    private let domain: DomainID
    private let store: XenStoreClient
    private let task: Task<DomainStoreState, any Error>
    private let paused = PauseGate()

    /// Starts reading `domain`'s state (but its `control` directory) on `store` in a transaction.
    init(_ domain: DomainID, on store: XenStoreClient) {
        self.domain = domain
        self.store = store
        let apart: Set<String> = [DomainStoreState.control(of: domain)]
        let paused = self.paused
        task = Task {
            try await store.transaction(maxAttempts: 8) { tx in
                let state = try await DomainStoreState.read(domain, on: tx, apart: apart)
                // Committed once the domain is paused (at once on a retry); a cancel aborts.
                try await paused.wait()
                return state
            }
        }
    }

    deinit { task.cancel() }

    /// The state as at the commit, once the domain is paused, with the `control` directory
    /// read now; read afresh if the transaction failed for another reason than a change.
    func finish() async throws -> DomainStoreState {
        paused.open()
        async let control = DomainStoreState.subtree(DomainStoreState.control(of: domain), on: store)
        guard var state = try? await task.value else {
            _ = try? await control
            return try await DomainStoreState.read(domain, on: store)
        }
        // After the rest: its parent, the domain's home, comes first.
        state.entries += try await control
        return state
    }
}

/// Opened once; waiters before and after go on (a cancelled waiter throws).
private final class PauseGate: Sendable {
    private let state = Locked<(open: Bool, waiters: [UInt64: CheckedContinuation<Void, any Error>], next: UInt64)>((false, [:], 0))

    func open() {
        let waiters = state.withLock { s in
            s.open = true
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in waiters { w.resume() }
    }

    func wait() async throws {
        let id = state.withLock { s in defer { s.next += 1 }; return s.next }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let now = state.withLock { s -> Bool in
                    if s.open || Task.isCancelled { return true }
                    s.waiters[id] = c
                    return false
                }
                if now { c.resume() }
            }
            try Task.checkCancellation()
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }
}
