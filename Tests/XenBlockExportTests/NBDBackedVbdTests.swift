import BlockViewTestSupport
import Foundation
import Glibc
import TestSupport
import Testing

/// blkback end to end over the NBD engine: a vbd whose `params` is an NBD URI served by
/// a real nbdkit over the image; what the guest writes lands in the server's file.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit")), .timeLimit(.minutes(5)))
struct NBDBackedVbdTests {
    @Test func aGuestWriteOverNBDLandsInTheServersImage() async throws {
        let server = ServerBox<Process>()
        // The server is killed and awaited (never blocking a pool thread) however the test ends.
        try await withCleanup {
            let disk = try await PVDisk.make(bytes: 4 << 20) { image in
                let socket = image + ".sock"
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/nbdkit")
                p.arguments = ["-f", "-U", socket, "file", image]
                p.standardInput = FileHandle.nullDevice
                try p.run()
                server.value = p
                _ = await eventually(60) { unixSocketAccepts(socket) }
                return "nbd+unix:///?socket=\(socket)"
            }
            let pattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
            try await disk.frontend.write(at: 1 << 20, pattern)
            try await disk.frontend.flush()
            #expect(try await disk.frontend.read(at: 1 << 20, count: 65536) == pattern)
            let file = try Data(contentsOf: URL(fileURLWithPath: disk.image))
            #expect(Array(file[(1 << 20)..<((1 << 20) + 65536)]) == pattern)
            #expect(try await disk.close().isEmpty)
        } cleanup: {
            if let p = server.value { await killAndAwait(p) }
        }
    }
}

/// An export without `NBD_FLAG_CAN_MULTI_CONN` (qemu-nbd serving one client at a time)
/// flushes only the writes of its own connection, so blkback serves it with one queue (one
/// connection); nbdkit's file plugin has multi-conn, and keeps the backend's usual offer.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit")
                    && FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-nbd")), .timeLimit(.minutes(5)))
struct NBDMultiConnTests {
    @Test(arguments: [("qemu-nbd", "1"), ("nbdkit", "4")])
    func queuesFollowTheServersMultiConnFlag(server: String, queues: String) async throws {
        let box = ServerBox<Process>()
        // The server is killed and awaited (never blocking a pool thread) however the test ends.
        try await withCleanup {
            let disk = try await PVDisk.make(bytes: 4 << 20) { image in
                let socket = image + ".sock"
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/" + server)
                // qemu-nbd --persistent serves one client at a time (the probe, then the queue) and says no multi-conn.
                p.arguments = server == "qemu-nbd" ? ["-k", socket, "-f", "raw", "--persistent", image] : ["-f", "-U", socket, "file", image]
                p.standardInput = FileHandle.nullDevice
                try p.run()
                box.value = p
                _ = await eventually(60) { unixSocketAccepts(socket) }
                return "nbd+unix:///?socket=\(socket)"
            }
            #expect(try await disk.host.store.read(disk.backendPath + "/multi-queue-max-queues") == queues)
            let pattern = [UInt8](repeating: 0xC3, count: 8192)
            try await disk.frontend.write(at: 4096, pattern)
            try await disk.frontend.flush()
            #expect(try await disk.frontend.read(at: 4096, count: 8192) == pattern)
            #expect(try await disk.close().isEmpty)
        } cleanup: {
            if let p = box.value { await killAndAwait(p) }
        }
    }
}

/// A value set once by one task and read by another after it (no overlap in the test).
final class ServerBox<T>: @unchecked Sendable {
    var value: T?
    init() {}
}
