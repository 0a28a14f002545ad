import BlockViewTestSupport
import Foundation
import NBDProtocol
import TestSupport
import Testing
import XenBlockExport
import XenBlockFront

/// Who takes a client's requests off its socket: blkfront's queue thread for a guest's
/// vbd (no thread between the client and the ring), the connection's own reader for a
/// device without such a thread, and the reader again once the vbd closes or has no
/// thread to see the socket end.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct DeviceInputTests {
    private func served(_ disk: PVDisk) throws -> (BlockExportServer, String) {
        let server = try BlockExportServer(device: disk.frontend)
        let socket = disk.directory.path("nbd.sock")
        try server.listen(on: .unix(socket))
        return (server, socket)
    }

    private func finish(_ disk: PVDisk, _ server: BlockExportServer) async throws {
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)), "the server's threads did not exit")
        let leftovers = try await disk.close()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// A write then a read of it: the export still answers the client rightly.
    private func roundTrip(_ client: RawClient, seed: UInt8) throws {
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 11) ^ seed }
        let w = try client.request(NBDRequest(command: .write, handle: 1, offset: 8192, length: 8192), data: data)
        #expect(w.0 == .ok)
        let r = try client.request(NBDRequest(command: .read, handle: 2, offset: 8192, length: 8192))
        #expect(r.0 == .ok && r.1 == data)
    }

    @Test func theVbdsQueueThreadTakesTheRequests() async throws {
        let disk = try await PVDisk.make(bytes: 16 << 20)
        let (server, socket) = try served(disk)
        let client = try await RawClient.inTransmission(socket)
        try await onThread { try roundTrip(client, seed: 1) }
        // Counted once the look at the input that took them ends, maybe after their replies.
        #expect(await eventually { server.counters.requestsTakenByDevice == 2 }, "\(server.counters)")
        #expect(server.counters.requestsTakenByConnections == 0, "\(server.counters)")
        try await finish(disk, server)
    }

    /// Far more requests at once than a connection may have in flight (64): the queue
    /// thread stops taking them at the bound and goes on as replies finish, until every
    /// one is answered.
    @Test func requestsBeyondTheInFlightBoundWaitOnTheSocketAndAreAllAnswered() async throws {
        let disk = try await PVDisk.make(bytes: 16 << 20)
        let (server, socket) = try served(disk)
        let client = try await RawClient.inTransmission(socket)
        let count = 300
        let wire = (0..<count).flatMap {
            NBDRequest(command: .read, handle: UInt64($0), offset: UInt64($0 % 64) * 4096, length: 4096).encoded()
        }
        let handles = try await onThread { () throws -> Set<UInt64> in
            client.send(wire)
            var seen = Set<UInt64>()
            for _ in 0..<count {
                guard let bytes = client.receive(NBDSimpleReply.size) else { throw NBDProtocolError(.truncated, "no reply") }
                let reply = try NBDSimpleReply(decoding: bytes)
                #expect(reply.error == .ok)
                #expect(client.receive(4096) == [UInt8](repeating: 0, count: 4096))
                seen.insert(reply.handle)
            }
            return seen
        }
        #expect(handles == Set((0..<count).map(UInt64.init)))
        #expect(await eventually { server.counters.requestsTakenByDevice == count }, "\(server.counters)")
        try await finish(disk, server)
    }

    @Test func aMemoryDiskIsReadByTheConnectionsOwnThread() async throws {
        let device = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
        let server = try BlockExportServer(device: device)
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-input")
        defer { dir.remove() }
        let socket = dir.path("nbd.sock")
        try server.listen(on: .unix(socket))
        let client = try await RawClient.inTransmission(socket)
        try await onThread { try roundTrip(client, seed: 2) }
        #expect(await eventually { server.counters.requestsTakenByConnections == 2 }, "\(server.counters)")
        #expect(server.counters.requestsTakenByDevice == 0, "\(server.counters)")
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(60)))
    }

    /// The vbd between two connections (no queue thread to see the socket end): stopping
    /// the server still ends the connection.
    @Test func theServerStopsWhileTheVbdHasNoConnection() async throws {
        let disk = try await PVDisk.make(bytes: 16 << 20)
        let (server, socket) = try served(disk)
        let client = try await RawClient.inTransmission(socket)
        await disk.frontend.detached()
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)), "the connection waited for a thread that was not there")
        #expect(await onThread { client.closedByServer() })
        let leftovers = try await disk.close()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// The vbd closes for good while a client is connected: its requests are answered
    /// (with `ESHUTDOWN`), by the connection's own thread, instead of waiting for a queue
    /// thread that will not come.
    @Test func aVbdThatClosesHandsItsClientsBack() async throws {
        let disk = try await PVDisk.make(bytes: 16 << 20)
        let (server, socket) = try served(disk)
        let client = try await RawClient.inTransmission(socket)
        await disk.frontend.detached()
        disk.frontend.shutdown()
        let reply = try await onThread { try client.request(NBDRequest(command: .read, handle: 4, offset: 0, length: 4096)) }
        #expect(reply.0 == .shutdown)
        #expect(await eventually { server.counters.requestsTakenByConnections == 1 }, "\(server.counters)")
        try await finish(disk, server)
    }
}
