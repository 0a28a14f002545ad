import Foundation
import Glibc
import NBDProtocol
import TestSupport
import Testing

@testable import XenBlockExport

@Suite(.timeLimit(.minutes(2)))
struct ExportInputTests {
    /// A connected pair of stream sockets: the client's end and the server's.
    private func pair() -> (client: Int32, server: Int32) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            precondition(n > 0)
            off += n
        }
    }

    /// `count` bytes, waiting in `poll` whenever the input says it waits (as the export's
    /// reader does); nil if the stream ended first.
    private func read(_ input: inout ExportInput, _ count: Int, fd: Int32) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while true {
            let progress = bytes.withUnsafeMutableBytes { input.fill($0.baseAddress!, count: count, done: &done) }
            switch progress {
            case .done: return bytes
            case .ended: return nil
            case .waiting: guard ExportSocket.awaitInput(fd) else { return nil }
            }
        }
    }

    /// The input never waits: with nothing on the socket it says so; a header sent in two
    /// pieces is buffered whole and looked at without being taken; the stream's end is
    /// the end.
    @Test func anInputThatHasNothingSaysSoAndAHeaderIsLookedAtBeforeItIsTaken() throws {
        let (client, server) = pair()
        defer {
            close(client)
            close(server)
        }
        var input = ExportInput(fd: server)
        #expect(input.buffer(NBDRequest.size) == .waiting)
        let header = NBDRequest(command: .read, handle: 9, offset: 512, length: 512).encoded()
        send(client, Array(header[0..<10]))
        #expect(input.buffer(NBDRequest.size) == .waiting)
        #expect(input.buffered == 10)
        send(client, Array(header[10...]))
        #expect(input.buffer(NBDRequest.size) == .done)
        #expect(input.buffer(NBDRequest.size) == .done)
        #expect(Array(input.bytes[0..<NBDRequest.size]) == header)
        input.consume(NBDRequest.size)
        #expect(input.buffer(1) == .waiting)
        shutdown(client, Int32(SHUT_WR))
        #expect(input.buffer(1) == .ended)
    }

    /// Ten requests sent together, writes with their payloads, come out whole and in order
    /// from one `recv`.
    @Test func requestsWaitingTogetherAreReadWithOneReceive() throws {
        let (client, server) = pair()
        defer {
            close(client)
            close(server)
        }
        var wire: [UInt8] = []
        for i in 0..<10 {
            let write = i % 2 == 1
            wire += NBDRequest(command: write ? .write : .read, handle: UInt64(i), offset: UInt64(i) * 4096, length: 4096).encoded()
            if write { wire += [UInt8](repeating: UInt8(i), count: 4096) }
        }
        send(client, wire)
        var input = ExportInput(fd: server)
        for i in 0..<10 {
            let request = try NBDRequest(decoding: try #require(read(&input, NBDRequest.size, fd: server)))
            #expect(request.handle == UInt64(i))
            if request.command == .write {
                #expect(read(&input, 4096, fd: server) == [UInt8](repeating: UInt8(i), count: 4096))
            }
        }
        #expect(input.receives == 1)
        #expect(input.buffered == 0 && !ExportSocket.hasInput(server))
    }

    /// A `recv` that gets less than it had room for read the socket dry: the next look says
    /// `.waiting` without a `recv` (which would only fail with EAGAIN); the one after that
    /// reads again, and what came meanwhile is not lost.
    @Test func aShortReceiveIsTheLastOneUntilTheCallerComesBack() throws {
        let (client, server) = pair()
        defer {
            close(client)
            close(server)
        }
        var input = ExportInput(fd: server)
        for i in 0..<3 { send(client, NBDRequest(command: .read, handle: UInt64(i), offset: 0, length: 512).encoded()) }
        for i in 0..<3 {
            #expect(input.buffer(NBDRequest.size) == .done)
            #expect(try NBDRequest(decoding: Array(input.bytes[0..<NBDRequest.size])).handle == UInt64(i))
            input.consume(NBDRequest.size)
        }
        #expect(input.buffer(NBDRequest.size) == .waiting)
        #expect(input.receives == 1 && input.dryReceives == 0)
        send(client, NBDRequest(command: .read, handle: 3, offset: 0, length: 512).encoded())
        #expect(input.buffer(NBDRequest.size) == .done)
        #expect(try NBDRequest(decoding: Array(input.bytes[0..<NBDRequest.size])).handle == 3)
        input.consume(NBDRequest.size)
        #expect(input.receives == 2 && input.dryReceives == 0)
        // Dry again: one look without a recv, then the next one reads (here: nothing).
        #expect(input.buffer(NBDRequest.size) == .waiting)
        #expect(input.dryReceives == 0)
        #expect(input.buffer(NBDRequest.size) == .waiting)
        #expect(input.dryReceives == 1)
    }

    /// Bytes that come in pieces (a header split across sends, a payload larger than the
    /// buffer) still come out whole; the end of the stream mid-read is a failure.
    @Test func piecesAndLargePayloadsComeOutWholeAndAnEndIsAFailure() async throws {
        let (client, server) = pair()
        defer { close(server) }
        let header = NBDRequest(command: .write, handle: 7, offset: 0, length: UInt32(ExportInput.capacity * 3)).encoded()
        let payload = (0..<(ExportInput.capacity * 3)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 9) }
        // The sends (which fill the socket) and the reads (which wait for them) block: each
        // side on a thread of its own, never the cooperative pool's.
        Thread { [self] in
            send(client, Array(header[0..<5]))
            usleep(20_000)
            send(client, Array(header[5...]) + Array(payload[0..<100]))
            usleep(20_000)
            send(client, Array(payload[100...]) + [0x25, 0x60])
            close(client)
        }.start()
        let (first, body, end) = await onThread { [self] in
            var input = ExportInput(fd: server)
            return (read(&input, NBDRequest.size, fd: server), read(&input, payload.count, fd: server), read(&input, NBDRequest.size, fd: server))
        }
        let request = try NBDRequest(decoding: try #require(first))
        #expect(request.handle == 7)
        #expect(body == payload)
        // Two bytes of a header, then the end.
        #expect(end == nil)
    }
}
