/// What drivers and the toolstack need of a store connection, whichever
/// client provides it: `XenStoreClient` (our wire client, over a socket or a
/// domain's ring) or `LibXenStore` (Xen's own library, in the XenHost module).
public protocol XenStoreConnection: XenStoreOperations {
    /// Watches `path` and its subtree; the first event comes at once (Xen
    /// fires a new watch once). Ending the iteration removes the watch.
    func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent>
    /// Runs `body` in a transaction and commits it, running it again when the
    /// commit conflicts (`EAGAIN`).
    func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T
}

extension XenStoreClient: XenStoreConnection {
    /// Sets a watch with ``XenStoreClient/watch(_:bufferLimit:)`` and forwards its events;
    /// ending the returned stream cancels the watch. Throws what `XS_WATCH` does.
    public func watchEvents(_ path: String) async throws(XenStoreError) -> AsyncStream<XenStoreWatchEvent> {
        let watch = try await watch(path)
        return AsyncStream { continuation in
            let forward = Task {
                for await event in watch { continuation.yield(event) }
                continuation.finish()
            }
            continuation.onTermination = { _ in
                forward.cancel()
                watch.cancel()
            }
        }
    }

    /// ``XenStoreClient/transaction(maxAttempts:_:)`` with its default attempt bound.
    public func inTransaction<T: Sendable>(_ body: (any XenStoreOperations) async throws -> T) async throws -> T {
        try await transaction { tx in try await body(tx) }
    }
}
