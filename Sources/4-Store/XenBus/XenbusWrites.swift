import XenStore

/// The store writes a driver's `prepare` leaves to its handshake: the endpoint makes them
/// in the transaction that publishes the state that follows (Initialised for a frontend,
/// InitWait for a backend). So the peer sees the keys and that state together, never one
/// without the other; nothing is written once the toolstack removed the device's directory;
/// and a resumed guest's downtime has one transaction in it where it had two.
public struct XenbusWrites: Sendable {
    private let body: @Sendable (any XenStoreOperations) async throws -> Void

    /// Writes made by `body`, inside a transaction; it may run more than once (a
    /// transaction that conflicts is tried again), so it only reads and writes the store.
    public init(_ body: @escaping @Sendable (any XenStoreOperations) async throws -> Void) {
        self.body = body
    }

    /// Each `(path, value)` written, all in flight at once.
    public static func entries(_ entries: [(String, String)]) -> XenbusWrites {
        XenbusWrites { store in try await store.writeAll(entries) }
    }

    /// No writes.
    public static let empty = XenbusWrites { _ in }

    /// Makes the writes through `store`.
    public func apply(to store: any XenStoreOperations) async throws {
        try await body(store)
    }
}
