import BlockViewTestSupport
import Foundation
import NBDProtocol
import TestSupport
import Testing
import XenBlockExport

/// The same server over TCP with a disk in memory; shutdown closes listeners and clients.
@Suite(.timeLimit(.minutes(10)), .enabled(if: nbdToolsInstalled, "needs libnbd-bin and qemu-utils"))
struct MemoryExportTests {
    @Test func qemuIoOverTCPOnAMemoryDisk() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 8 << 20, canDiscard: true, discardZeroes: true))
        let server = try BlockExportServer(device: device, name: "mem")
        let bound = try server.listen(on: .tcp(host: "127.0.0.1", port: 0))
        guard case .tcp(_, let port) = bound, port != 0 else {
            Issue.record("no port bound: \(bound)")
            return
        }
        let run = try await runTool("qemu-io", ["-f", "raw", "-c", "write -P 0x5c 4k 8k", "-c", "discard 4k 4k",
                                                "-c", "read -P 0 4k 4k", "-c", "read -P 0x5c 8k 4k", "nbd://127.0.0.1:\(port)/mem"])
        #expect(run.status == 0 && !run.output.contains("failed"), "\(run)")
        #expect(device.snapshot(at: 8192, count: 4096) == [UInt8](repeating: 0x5C, count: 4096))
        #expect(device.snapshot(at: 4096, count: 4096) == [UInt8](repeating: 0, count: 4096))
        // A name the server does not have is refused by NBD_OPT_GO.
        let wrong = try await runTool("nbdinfo", ["nbd://127.0.0.1:\(port)/other"])
        #expect(wrong.status != 0, "\(wrong)")
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(60)))
    }

    /// A client that connects and never finishes the handshake is dropped: idle sockets
    /// cannot hold every connection slot.
    @Test func aClientSilentInTheHandshakeIsDropped() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        var limits = BlockExportLimits()
        limits.handshakeSeconds = 1
        let server = try BlockExportServer(device: device, limits: limits)
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-mem")
        defer { dir.remove() }
        let socket = dir.path("nbd.sock")
        try server.listen(on: .unix(socket))
        let (dropped, servedAfter) = try await onThread {
            let silent = try RawClient(socket)
            _ = silent.receive(NBDServerGreeting.size)
            // Bounded: without the handshake deadline this recv would wait a minute and fail the test.
            var wait = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(silent.fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
            let dropped = silent.closedByServer()
            // A client that talks is served as before.
            let next = try RawClient(socket)
            let size = try next.go().size
            return (dropped, size == 1 << 20)
        }
        #expect(dropped, "the silent client kept its connection")
        #expect(servedAfter)
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)))
    }

    @Test func shutdownClosesTheListenerAndConnectedClients() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        let server = try BlockExportServer(device: device)
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-mem")
        defer { dir.remove() }
        let socket = dir.path("nbd.sock")
        try server.listen(on: .unix(socket))
        let idle = try await RawClient.inTransmission(socket)
        #expect(await eventually { server.counters.accepted == 1 })
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(60)))
        #expect(!FileManager.default.fileExists(atPath: socket))
        #expect(idle.closedByServer())
        #expect(server.counters.closed == 1)
    }
}
