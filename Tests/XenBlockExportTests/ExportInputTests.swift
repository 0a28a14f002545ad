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

    private func read(_ input: inout ExportInput, _ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let ok = bytes.withUnsafeMutableBytes { count == 0 || input.read(into: $0.baseAddress!, count: count) }
        return ok ? bytes : nil
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
            let request = try NBDRequest(decoding: try #require(read(&input, NBDRequest.size)))
            #expect(request.handle == UInt64(i))
            if request.command == .write {
                #expect(read(&input, 4096) == [UInt8](repeating: UInt8(i), count: 4096))
            }
        }
        #expect(input.receives == 1)
        #expect(input.buffered == 0 && !input.hasInput)
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
            return (read(&input, NBDRequest.size), read(&input, payload.count), read(&input, NBDRequest.size))
        }
        let request = try NBDRequest(decoding: try #require(first))
        #expect(request.handle == 7)
        #expect(body == payload)
        // Two bytes of a header, then the end.
        #expect(end == nil)
    }
}
