import XenABI
import XenStore

/// What a toolstack asks of a guest through `control/shutdown` (xl's `shutdown`,
/// `reboot`; Linux's `drivers/xen/manage.c` handles the same words).
public enum ShutdownRequest: String, Hashable, Sendable, CaseIterable {
    /// Power off: the guest stops for good (`xl shutdown`).
    case poweroff
    /// Reboot: the guest stops and the toolstack starts it again (`xl reboot`).
    case reboot
    /// Halt: as poweroff.
    case halt
    /// Suspend: the guest saves its state and stops (not served by XenPV's toolstack).
    case suspend
}

/// The guest half of the PV control protocol: watches the domain's
/// `control/shutdown`, acknowledges a request as Linux does and hands it to the program.
///
/// Linux (`shutdown_handler` in drivers/xen/manage.c) reads the key in a transaction,
/// and when it holds a request it knows, writes the empty string back in the same
/// transaction (the acknowledgement a toolstack waits for) before acting; a value it
/// does not know is left in place and ignored. ``requests()`` does the same and
/// delivers each acknowledged request. The key is the guest's own (libxl makes
/// `control/shutdown` writable by the domain), so whatever is in it, the guest's
/// own or a toolstack's, is read as a bounded string and compared, never trusted
/// further.
public struct GuestControl: Sendable {
    /// `control/shutdown`, relative to the domain's home.
    public static let shutdownKey = "control/shutdown"
    /// The `control/feature-*` flags a guest writes to say which requests it handles.
    public static let featureKeys = ["control/feature-poweroff", "control/feature-reboot"]

    let store: any XenStoreConnection
    let home: String

    /// The control protocol of `domain`, spoken through `store` (a connection speaking as that domain).
    public init(store: any XenStoreConnection, domain: DomainID) {
        self.store = store
        home = XenStorePath.home(of: domain)
    }

    /// Announces the features (`control/feature-poweroff`, `-reboot` = 1; best effort:
    /// a domain without a `control` directory cannot write them) and returns each
    /// request as it is acknowledged. Ending the iteration removes the watch.
    /// - Throws: what setting the watch throws.
    public func requests() async throws(XenStoreError) -> AsyncStream<ShutdownRequest> {
        for key in Self.featureKeys { try? await store.write(home + "/" + key, "1") }
        let path = home + "/" + Self.shutdownKey
        let events = try await store.watchEvents(path)
        let store = self.store
        return AsyncStream { continuation in
            let task = Task {
                for await _ in events {
                    if let request = await Self.acknowledge(path, store) { continuation.yield(request) }
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Reads the key and, if it holds a request, clears it in the same transaction.
    static func acknowledge(_ path: String, _ store: any XenStoreConnection) async -> ShutdownRequest? {
        try? await store.inTransaction { tx -> ShutdownRequest? in
            guard let value = try await tx.readIfPresent(path), let request = ShutdownRequest(rawValue: value) else { return nil }
            try await tx.write(path, "")
            return request
        }
    }
}
