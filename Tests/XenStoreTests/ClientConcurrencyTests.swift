import Dispatch
import Foundation
import TestSupport
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// Many tasks sharing one client: each reply reaches its own request, and the client keeps
/// reading replies while a request waits for room to be sent. The daemon stops reading a
/// connection whose replies pile up unread, so a client that cannot deliver replies while
/// one of its requests waits to be sent stalls both sides: on a guest's ring until the send
/// times out, on a socket for ever.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct ClientConcurrencyTests {
    /// `tasks` tasks at once on `client`, each writing its own node under `base` with a
    /// `valueSize`-byte value that names it and reading it back; returns what went wrong,
    /// one line each. Large values both ways fill the request and the reply buffers.
    static func hammer(_ client: XenStoreClient, base: String, tasks: Int, valueSize: Int) async -> [String] {
        // The deadline only keeps a stalled client from hanging the suite: closing it fails
        // whatever still waits. On a Dispatch thread, since a stalled client may hold every
        // thread of the cooperative pool.
        let watchdog = DispatchWorkItem { client.close() }
        DispatchQueue.global().asyncAfter(deadline: .now() + minimumDeadline, execute: watchdog)
        defer { watchdog.cancel() }
        return await withTaskGroup(of: String?.self) { group in
            for i in 0..<tasks {
                group.addTask {
                    let value = "\(i):" + String(repeating: "v", count: valueSize - "\(i):".count)
                    do {
                        try await client.write("\(base)/\(i)", value)
                        let back = try await client.read("\(base)/\(i)")
                        return back == value ? nil : "task \(i) got another request's reply (\(back.prefix(8)))"
                    } catch {
                        return "task \(i): \(error)"
                    }
                }
            }
            var failures: [String] = []
            for await f in group { if let f { failures.append(f) } }
            return failures
        }
    }

    @Test func twoHundredConcurrentRequestsOverAGuestsRing() async throws {
        let w = try RingTransportTests.World()
        // A send waits as long as a deadline may: only a stall, never a slow machine, fails it.
        let g = try await w.guestClient(sendTimeout: minimumDeadline)
        defer { g.close() }
        let failures = await Self.hammer(g, base: "data", tasks: 200, valueSize: 2000)
        #expect(failures.isEmpty, "\(failures.count) failed, first: \(failures.first ?? "")")
        // The connection is still usable afterwards.
        try await g.write("data/after", "ok")
        #expect(try await g.read("data/after") == "ok")
    }

    /// The socket's buffers are larger than the ring, so it takes more requests in flight.
    @Test func twoThousandConcurrentRequestsOverTheSocket() async throws {
        let s = try TestServer()
        let c = try s.client()
        defer { c.close() }
        let failures = await Self.hammer(c, base: "/hammer", tasks: 2000, valueSize: 4000)
        #expect(failures.isEmpty, "\(failures.count) failed, first: \(failures.first ?? "")")
        try await c.write("/after", "ok")
        #expect(try await c.read("/after") == "ok")
        await s.stop()
    }
}
