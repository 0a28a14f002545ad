import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
import XenMigrationStream
import XenStore
import XenStoreServer
@testable import XenToolstack

/// The store state a migration stream carries, read ahead in a transaction that the pause
/// commits: what it gives is the store as at the commit, whatever changed before.
@Suite(.timeLimit(.minutes(2)))
struct DomainStoreReadAheadTests {
    final class Store {
        let server: XenStoreServer
        let client: XenStoreClient
        let domain = DomainID(7)

        init() async throws {
            let path = "/tmp/readahead-\(UUID().uuidString.prefix(8)).sock"
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            server = XenStoreServer(socketPath: path, logger: logger)
            try server.start()
            client = try XenStoreClient(socketPath: path)
            try await XenbusToolstack.createDomainHome(domain, on: client)
            try await client.write(XenStorePath.home(of: domain) + "/name", "guest")
            try await client.write(XenStorePath.home(of: domain) + "/control/shutdown", "")
            try await XenbusToolstack.create(XenbusDevice(type: "vbd", id: 51712, frontend: domain), on: client,
                                             frontendKeys: ["virtual-device": "51712"], backendKeys: ["mode": "w"])
        }

        /// Closes the client, stops the server and awaits its loop thread's end on a thread
        /// of its own (`stop()` blocks until it ends), at most `minimumDeadline`. Every test
        /// ends with it.
        @discardableResult
        func stop() async -> Bool {
            client.close()
            let server = server
            return await onThread { server.stop(timeout: minimumDeadline) }
        }

        /// The last resort of a test that threw before `stop()`: tells the loop to stop and
        /// waits for nothing (a deinit may run on a pool thread).
        deinit {
            client.close()
            server.stop(timeout: 0)
        }
    }

    /// Every entry of `state` comes after its parent's, as a restore writes them.
    static func parentsFirst(_ state: DomainStoreState) -> Bool {
        var seen: Set<String> = []
        for e in state.entries {
            let parent = String(e.path[..<(e.path.lastIndex(of: "/") ?? e.path.startIndex)])
            if !seen.isEmpty && !seen.contains(parent) && state.entries.contains(where: { $0.path == parent }) { return false }
            seen.insert(e.path)
        }
        return true
    }

    @Test func withNothingChangedItGivesWhatAFullReadGives() async throws {
        let s = try await Store()
        try await withCleanup {
            let ahead = DomainStoreReadAhead(s.domain, on: s.client)
            let state = try await ahead.finish()
            let full = try await DomainStoreState.read(s.domain, on: s.client)
            #expect(Set(state.entries) == Set(full.entries) && state.entries.count == full.entries.count)
            #expect(state.devices == full.devices && state.devices.count == 1)
            #expect(Self.parentsFirst(state))
            #expect(state.entries.contains { $0.path.hasSuffix("/device/vbd/51712/backend") })
        } cleanup: {
            await s.stop()
        }
    }

    @Test func changesMadeBeforeThePauseAreInWhatItGives() async throws {
        let s = try await Store()
        try await withCleanup {
            let home = XenStorePath.home(of: s.domain)
            let ahead = DomainStoreReadAhead(s.domain, on: s.client)
            // Whether the read saw them or the commit failed on them and the state was read
            // again, the result holds them: a new node, a changed value, a device's key, and
            // the pause's own key (read apart).
            try await s.client.write(home + "/data/added", "1")
            try await s.client.write(home + "/name", "renamed")
            try await s.client.write("/local/domain/0/backend/vbd/\(s.domain.rawValue)/51712/mode", "r")
            try await s.client.write(home + "/control/shutdown", "suspend")
            let state = try await ahead.finish()
            let value = { (p: String) in state.entries.first { $0.path == home + p }.map { String(decoding: $0.value, as: UTF8.self) } }
            #expect(value("/data/added") == "1")
            #expect(value("/name") == "renamed")
            #expect(value("/control/shutdown") == "suspend")
            #expect(state.devices.first?.keys.first { $0.name == "mode" }?.value == "r")
            #expect(Self.parentsFirst(state))
            let full = try await DomainStoreState.read(s.domain, on: s.client)
            #expect(Set(state.entries) == Set(full.entries))
        } cleanup: {
            await s.stop()
        }
    }

    @Test func droppedBeforeThePauseItLeavesNoTransactionOpen() async throws {
        let s = try await Store()
        try await withCleanup {
            for _ in 0..<200 { _ = DomainStoreReadAhead(s.domain, on: s.client) }
            // A connection may hold only so many open transactions: had the dropped read-aheads
            // kept theirs, these would be refused.
            try await Task.sleep(nanoseconds: 200_000_000)
            for _ in 0..<20 { _ = try await DomainStoreReadAhead(s.domain, on: s.client).finish() }
        } cleanup: {
            await s.stop()
        }
    }
}
