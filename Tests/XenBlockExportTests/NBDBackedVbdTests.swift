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
        defer {
            if let p = server.value, p.isRunning {
                kill(p.processIdentifier, SIGKILL)
                p.waitUntilExit()
            }
        }
        let disk = try await PVDisk.make(bytes: 4 << 20) { image in
            let socket = image + ".sock"
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/nbdkit")
            p.arguments = ["-f", "-U", socket, "file", image]
            p.standardInput = FileHandle.nullDevice
            try p.run()
            server.value = p
            _ = await eventually(60) { FileManager.default.fileExists(atPath: socket) }
            return "nbd+unix:///?socket=\(socket)"
        }
        let pattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        try await disk.frontend.write(at: 1 << 20, pattern)
        try await disk.frontend.flush()
        #expect(try await disk.frontend.read(at: 1 << 20, count: 65536) == pattern)
        let file = try Data(contentsOf: URL(fileURLWithPath: disk.image))
        #expect(Array(file[(1 << 20)..<((1 << 20) + 65536)]) == pattern)
        #expect(try await disk.close().isEmpty)
    }
}

/// A value set once by one task and read by another after it (no overlap in the test).
final class ServerBox<T>: @unchecked Sendable {
    var value: T?
    init() {}
}
