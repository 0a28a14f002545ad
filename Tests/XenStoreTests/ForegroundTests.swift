import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
@testable import XenStore
@testable import XenStoreServer

@Suite(.timeLimit(.minutes(5)), .serialized)
struct ForegroundTests {
    @Test func runForegroundServesUntilSIGTERMThenCleansUp() async throws {
        let path = "/tmp/xs-fg-\(UUID().uuidString.prefix(8)).sock"
        let logger = {
            var l = Logger(label: "fg")
            l.logLevel = .critical
            return l
        }()
        let result = Mutex<Int32?>(nil)
        let thread = Thread {
            let sig = try? XenStoreServer.runForeground(socketPath: path, logger: logger)
            result.withLock { $0 = sig ?? -1 }
        }
        thread.start()
        // Wait (bounded) for the socket, which exists only once the handler is installed.
        var c: XenStoreClient?
        _ = await eventually {
            c = try? XenStoreClient(socketPath: path)
            return c != nil
        }
        let client = try #require(c)
        try await client.write("/fg", "1")
        #expect(try await client.read("/fg") == "1")
        kill(getpid(), SIGTERM)
        _ = await eventually { result.withLock { $0 } != nil }
        #expect(result.withLock { $0 } == SIGTERM)
        #expect(!FileManager.default.fileExists(atPath: path))
        await #expect(throws: XenStoreError.self) { _ = try await client.read("/fg") }
    }
}
