import BlockViewTestSupport
import Foundation
import NBDProtocol
import TestSupport
import Testing
import XenBlockExport

/// Clients that break the protocol lose their own connection; the export keeps serving
/// the others (a guest's vbd on an embedded host, as in `RealClientTests`).
@Suite(.serialized, .timeLimit(.minutes(10)))
struct NBDHostileClientTests {
    private static let size: UInt64 = 16 << 20

    private func withExport(_ body: (PVDisk, BlockExportServer, String) async throws -> Void) async throws {
        let disk = try await PVDisk.make(bytes: Int(Self.size))
        let server = try BlockExportServer(device: disk.frontend)
        let socket = disk.directory.path("nbd.sock")
        try server.listen(on: .unix(socket))
        do { try await body(disk, server, socket) } catch {
            server.shutdown()
            _ = await server.stopped(timeout: .seconds(120))
            _ = try? await disk.close()
            throw error
        }
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)), "the server's threads did not exit")
        let leftovers = try await disk.close()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    /// Writes a pattern and reads it back through `client`: the export still works for it.
    private func roundTrip(_ client: RawClient, at offset: UInt64, seed: UInt8) throws {
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7) ^ seed }
        let w = try client.request(NBDRequest(command: .write, handle: 0xA0 + UInt64(seed), offset: offset, length: 8192), data: data)
        #expect(w.0 == .ok)
        let r = try client.request(NBDRequest(command: .read, handle: 0xB0 + UInt64(seed), offset: offset, length: 8192))
        #expect(r.0 == .ok && r.1 == data)
    }

    @Test func garbageCostsOnlyThatConnection() async throws {
        try await withExport { _, server, socket in
            try await onThread {
                let good = try RawClient(socket)
                _ = try good.go()
                let bad = try RawClient(socket)
                _ = try bad.go()
                bad.send(Array("GET / HTTP/1.1\r\nHost: xvda\r\n\r\n".utf8))
                #expect(bad.closedByServer())
                try roundTrip(good, at: 4096, seed: 1)
            }
            #expect(await eventually { server.counters.closed >= 1 })
        }
    }

    @Test func garbageDuringTheHandshakeIsDropped() async throws {
        try await withExport { _, _, socket in
            try await onThread {
                // Unknown client flags.
                let a = try RawClient(socket)
                _ = a.receive(NBDServerGreeting.size)
                a.send([0, 0, 0x80, 0x01])
                #expect(a.closedByServer())
                // An option announcing 4 GiB of data.
                let b = try RawClient(socket)
                _ = b.receive(NBDServerGreeting.size)
                b.send(NBDClientGreeting(flags: .fixedNewstyle).encoded())
                b.send(NBDOptionHeader(option: .go, length: .max).encoded())
                #expect(b.closedByServer())
                // An unknown option and a malformed GO are answered with errors; then GO works.
                let c = try RawClient(socket)
                _ = c.receive(NBDServerGreeting.size)
                c.send(NBDClientGreeting(flags: .fixedNewstyle).encoded())
                c.send(NBDOptionHeader(option: NBDOption(rawValue: 0x4242), length: 3).encoded() + [1, 2, 3])
                let unsupported = try NBDOptionReply.decodeHeader(c.receive(NBDOptionReply.headerSize) ?? [])
                #expect(unsupported.type == .errUnsupported)
                _ = c.receive(Int(unsupported.length))
                c.send(NBDOptionHeader(option: .go, length: 6).encoded() + [0xFF, 0xFF, 0xFF, 0xFF, 0, 0])
                let invalid = try NBDOptionReply.decodeHeader(c.receive(NBDOptionReply.headerSize) ?? [])
                #expect(invalid.type == .errInvalid)
                _ = c.receive(Int(invalid.length))
                let data = try NBDInfoRequest(name: "sda", requests: []).encoded()
                c.send(NBDOptionHeader(option: .go, length: UInt32(data.count)).encoded() + data)
                let unknown = try NBDOptionReply.decodeHeader(c.receive(NBDOptionReply.headerSize) ?? [])
                #expect(unknown.type == .errUnknown)
                _ = c.receive(Int(unknown.length))
                let good = try RawClient(socket)
                let export = try good.go()
                #expect(export.size == Self.size)
                try roundTrip(good, at: 0, seed: 2)
            }
        }
    }

    @Test func requestsBeyondTheEndOrMisalignedAreErrorsAndTheConnectionGoesOn() async throws {
        try await withExport { _, _, socket in
            try await onThread {
                let c = try RawClient(socket)
                _ = try c.go()
                let page = [UInt8](repeating: 0x5A, count: 4096)
                #expect(try c.request(NBDRequest(command: .write, handle: 1, offset: Self.size, length: 4096), data: page).0 == .noSpace)
                #expect(try c.request(NBDRequest(command: .write, handle: 2, offset: Self.size - 512, length: 4096), data: page).0 == .noSpace)
                #expect(try c.request(NBDRequest(command: .read, handle: 3, offset: Self.size, length: 512)).0 == .invalid)
                #expect(try c.request(NBDRequest(command: .read, handle: 4, offset: 100, length: 512)).0 == .invalid)
                #expect(try c.request(NBDRequest(command: .write, handle: 5, offset: 0, length: 100), data: Array(page[0..<100])).0 == .invalid)
                #expect(try c.request(NBDRequest(command: NBDCommand(rawValue: 77), handle: 6, offset: 0, length: 0)).0 == .invalid)
                #expect(try c.request(NBDRequest(flags: .dontFragment, command: .read, handle: 7, offset: 0, length: 512)).0 == .invalid)
                // A read of 4 GiB − 1 is refused, not allocated; the connection goes on.
                #expect(try c.request(NBDRequest(command: .read, handle: 8, offset: 0, length: .max)).0 == .invalid)
                try roundTrip(c, at: 8192, seed: 3)
                // NBD_CMD_DISC: the server closes after what is in flight.
                c.send(NBDRequest(command: .disconnect, handle: 9, offset: 0, length: 0).encoded())
                #expect(c.closedByServer())
            }
        }
    }

    @Test func aHugeWriteCostsItsConnectionAndNothingElse() async throws {
        try await withExport { _, _, socket in
            try await onThread {
                let other = try RawClient(socket)
                _ = try other.go()
                let c = try RawClient(socket)
                _ = try c.go()
                c.send(NBDRequest(command: .write, handle: 1, offset: 0, length: .max).encoded() + [UInt8](repeating: 1, count: 4096))
                #expect(c.closedByServer())
                try roundTrip(other, at: 0, seed: 4)
            }
        }
    }

    @Test func aClientVanishingMidWriteWritesNothing() async throws {
        try await withExport { disk, server, socket in
            try await onThread {
                let c = try RawClient(socket)
                _ = try c.go()
                c.send(NBDRequest(command: .write, handle: 1, offset: 1 << 20, length: 1 << 20).encoded()
                       + [UInt8](repeating: 0xEE, count: 300 << 10))
            }
            #expect(await eventually { server.counters.closed >= 1 })
            let after = try await disk.frontend.read(at: 1 << 20, count: 1 << 20)
            #expect(after.allSatisfy { $0 == 0 })
            try await onThread {
                let next = try RawClient(socket)
                _ = try next.go()
                try roundTrip(next, at: 1 << 20, seed: 5)
            }
        }
    }

    @Test func aClientThatNeverReadsItsRepliesStallsOnlyItself() async throws {
        try await withExport { _, server, socket in
            try await onThread {
                let flood = try RawClient(socket)
                _ = try flood.go()
                // 512 MiB of reads asked for, none of the replies read: the server holds at most
                // its in-flight cap and stops reading this client.
                // Sent without waiting: once the server stops reading, the socket fills and the
                // rest is not sent (a blocking send would wait for ever, as the server's writer does).
                var sent = 0
                for h in 0..<512 where flood.sendWithoutWaiting(NBDRequest(command: .read, handle: UInt64(h), offset: 0, length: 1 << 20).encoded()) {
                    sent += 1
                }
                #expect(sent > 0)
                let good = try RawClient(socket)
                _ = try good.go()
                try roundTrip(good, at: 12288, seed: 6)
                withExtendedLifetime(flood) {}
            }
            #expect(await eventually { server.counters.closed >= 1 })
        }
    }

    @Test func outOfOrderRepliesMatchTheirHandles() async throws {
        try await withExport { _, _, socket in
            try await onThread {
                let c = try RawClient(socket)
                _ = try c.go()
                let blocks = 32
                for i in 0..<blocks {
                    let data = [UInt8](repeating: UInt8(i), count: 65536)
                    c.send(NBDRequest(command: .write, handle: UInt64(1000 + i), offset: UInt64(i) * 65536, length: 65536).encoded() + data)
                }
                var seen = Set<UInt64>()
                for _ in 0..<blocks {
                    let reply = try NBDSimpleReply(decoding: c.receive(NBDSimpleReply.size) ?? [])
                    #expect(reply.error == .ok)
                    seen.insert(reply.handle)
                }
                #expect(seen == Set((0..<blocks).map { UInt64(1000 + $0) }))
                for i in 0..<blocks {
                    c.send(NBDRequest(command: .read, handle: UInt64(i), offset: UInt64(i) * 65536, length: 65536).encoded())
                }
                var read = 0
                for _ in 0..<blocks {
                    let reply = try NBDSimpleReply(decoding: c.receive(NBDSimpleReply.size) ?? [])
                    let data = c.receive(65536) ?? []
                    #expect(reply.error == .ok && data == [UInt8](repeating: UInt8(truncatingIfNeeded: reply.handle), count: 65536))
                    read += 1
                }
                #expect(read == blocks)
            }
        }
    }
}
