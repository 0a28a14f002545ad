import Atomics
import CXen
import XenABI
import XenStore

// What only the daemon does to a guest's xenstore page, and the in-process toolstack calls
// that attach and release one. Reading and writing the page's rings (`XenStoreDomainRing`,
// either side) and a guest's transport (`XenStoreRingTransport`) are in XenStore.

extension XenStoreDomainRing {
    /// Daemon only: stores `code` (`XENSTORE_ERROR_*`) in the page's `error` field for the
    /// guest to see, with releasing order. The server sets it as it drops the connection.
    public func setError(_ code: UInt32) {
        index(Self.errorOffset).store(code, ordering: .releasing)
    }

    /// Daemon only: publishes `server_features` (we offer `XENSTORE_SERVER_FEATURE_ERROR`).
    public func publishFeatures() {
        index(Self.featuresOffset).store(UInt32(XENSTORE_SERVER_FEATURE_ERROR), ordering: .releasing)
        index(Self.connectionOffset).store(UInt32(XENSTORE_CONNECTED), ordering: .releasing)
    }
}

extension XenStoreServer {
    /// Introduces a guest in-process, as a toolstack's `XS_INTRODUCE` does: maps its xenstore
    /// page (by the grant reference it gave dom0), binds its event channel, serves it as that
    /// domain and fires `@introduceDomain`. Needs the server's `hypervisor`.
    /// Blocks the calling thread for the loop's answer: async code uses the `async` form.
    public func introduceDomain(_ domain: DomainID, ringRef: GrantRef, eventPort: EventPort) throws(XenStoreError) {
        let message = Self.introduce(domain, ringRef, eventPort)
        try Self.check(withEngine({ $0.perform(message, as: .dom0) }), introducing: domain)
    }

    /// `introduceDomain` for async code: suspends for the loop's answer instead of blocking.
    public func introduceDomain(_ domain: DomainID, ringRef: GrantRef, eventPort: EventPort) async throws(XenStoreError) {
        let message = Self.introduce(domain, ringRef, eventPort)
        try Self.check(await withEngine({ $0.perform(message, as: .dom0) }), introducing: domain)
    }

    /// Releases a guest: drops its ring connection and fires `@releaseDomain`. Blocks the
    /// calling thread for the loop: async code uses the `async` form.
    public func releaseDomain(_ domain: DomainID) {
        _ = withEngine { engine in engine.releaseDomain(domain) }
    }

    /// `releaseDomain` for async code: suspends for the loop instead of blocking.
    public func releaseDomain(_ domain: DomainID) async {
        _ = await withEngine { engine in engine.releaseDomain(domain) }
    }

    private static func introduce(_ domain: DomainID, _ ringRef: GrantRef, _ eventPort: EventPort) -> XenStoreMessage {
        XenStoreMessage(
            type: .introduce, strings: [String(domain.rawValue), String(ringRef.rawValue), String(eventPort.rawValue)])
    }

    /// The introduce's reply as an error: none for OK, `.closed` for no reply (server stopped).
    private static func check(_ reply: XenStoreMessage?, introducing domain: DomainID) throws(XenStoreError) {
        guard let reply else { throw XenStoreError(.closed, "server stopped") }
        if reply.type == .error { throw XenStoreError(XenStoreError.Code(rawValue: reply.text), "introducing \(domain)") }
    }
}
