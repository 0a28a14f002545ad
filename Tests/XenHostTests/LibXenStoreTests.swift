import Foundation
import Glibc
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
@testable import XenHost
import XenStore
import XenStoreServer

/// Xen's own libxenstore against our xenstored: libxenstore honours
/// XENSTORED_PATH, so the store protocol runs through the real library.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct LibXenStoreTests {
    let server: XenStoreServer
    let base = "/tmp/xpv-libxs-\(UUID().uuidString.prefix(8))"

    init() throws {
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        server = XenStoreServer(socketPath: base + ".sock", extraSockets: [(base + "-d7.sock", DomainID(7))], logger: quiet)
        try server.start()
    }

    /// A libxenstore connection to our server, as dom0 or as guest 7.
    func open(asGuest: Bool = false) throws -> LibXenStore {
        try StoreEnvironment.open(socket: asGuest ? base + "-d7.sock" : base + ".sock")
    }

    /// Closes `xs`, then stops the server: on a thread of their own, as `stop()` waits for
    /// the server's loop thread to end (at most `minimumDeadline`). Every test ends with it.
    func stop(closing xs: LibXenStore) async {
        let server = server
        _ = await onThread { () -> Bool in
            xs.close()
            return server.stop(timeout: minimumDeadline)
        }
    }

    @Test func readWriteDirectoryPermissionsThroughLibxenstore() async throws {
        let xs = try open()
        try await withCleanup {
            let ours = try XenStoreClient(socketPath: base + ".sock")
            try await xs.write("/local/domain/7/device/vif/0/state", "4")
            try await xs.write("/local/domain/7/device/vif/0/mac", "00:16:3e:00:00:07")
            #expect(try await ours.read("/local/domain/7/device/vif/0/state") == "4")
            try await ours.write("/local/domain/7/name", "guest")
            #expect(try await xs.read("/local/domain/7/name") == "guest")
            #expect(try await xs.directory("/local/domain/7/device/vif/0").sorted() == ["mac", "state"])
            try await xs.mkdir("/local/domain/7/empty")
            #expect(try await xs.read("/local/domain/7/empty") == "")
            // The feature helpers drivers use work on it unchanged.
            #expect(try await xs.readState("/local/domain/7/device/vif/0") == .connected)
            #expect(try await xs.readNumber("/local/domain/7/device/vif/0", "state", in: UInt32(0)...8) == 4)
            #expect(try await xs.readMAC("/local/domain/7/device/vif/0", "mac") == [0, 0x16, 0x3e, 0, 0, 7])
            let perms = XenStorePermissions(owner: DomainID(7), grants: [.init(.read, .dom0)])
            try await xs.setPermissions("/local/domain/7/device", perms)
            #expect(try await ours.permissions("/local/domain/7/device") == perms)
            #expect(try await xs.permissions("/local/domain/7/device") == perms)
            #expect(try await xs.domainPath(DomainID(7)) == "/local/domain/7")
            try await xs.rm("/local/domain/7/device")
            #expect(try await ours.readIfPresent("/local/domain/7/device/vif/0/state") == nil)
            let missing = await #expect(throws: XenStoreError.self) { try await xs.read("/local/domain/7/nothing") }
            #expect(missing?.code == .noEntry)
        } cleanup: {
            await stop(closing: xs)
        }
    }

    @Test func aGuestConnectionIsRefusedWhatItWasNotGiven() async throws {
        let ours = try XenStoreClient(socketPath: base + ".sock")
        try await ours.write("/local/domain/0/secret", "x")
        let guest = try open(asGuest: true)
        try await withCleanup {
            let refused = await #expect(throws: XenStoreError.self) { try await guest.read("/local/domain/0/secret") }
            #expect(refused?.code == .accessDenied)
        } cleanup: {
            await stop(closing: guest)
        }
    }

    @Test func watchesFireThroughXsFileno() async throws {
        let xs = try open()
        try await withCleanup {
            let ours = try XenStoreClient(socketPath: base + ".sock")
            let events = try await xs.watch("/local/domain/9")
            var iterator = events.makeAsyncIterator()
            let first = await iterator.next()
            #expect(first?.path == "/local/domain/9")  // fired once at registration, as Xen does
            try await ours.write("/local/domain/9/state", "1")
            let second = await iterator.next()
            #expect(second?.path == "/local/domain/9/state")
        } cleanup: {
            await stop(closing: xs)
        }
    }

    @Test func transactionsRetryOnConflict() async throws {
        let xs = try open()
        try await withCleanup {
            let ours = try XenStoreClient(socketPath: base + ".sock")
            try await ours.write("/counter", "0")
            let attempts = AttemptCounter()
            try await xs.transaction { tx in
                let n = Int(try await tx.read("/counter"))!
                if attempts.next() == 1 { try await ours.write("/counter", "10") }  // a conflicting commit
                try await tx.write("/counter", String(n + 1))
            }
            #expect(attempts.count == 2)
            #expect(try await ours.read("/counter") == "11")
        } cleanup: {
            await stop(closing: xs)
        }
    }
}

final class AttemptCounter: @unchecked Sendable {
    private var value = 0
    func next() -> Int { value += 1; return value }
    var count: Int { value }
}
