import Glibc
import NBDProtocol
import TestSupport
import Testing
@testable import XenBlockStorage

/// The NBD engine's batching: the requests of one submit leave in one `sendmsg`, and the
/// replies waiting on the socket are taken in one `recv`, parsed from a buffer; a read's
/// long data goes straight into its buffers. Whatever way the server cuts its bytes, each
/// read gets its own data.
@Suite(.timeLimit(.minutes(5)))
struct NBDBatchingTests {
    static func simple(_ handle: UInt64, error: NBDErrno = .ok) -> [UInt8] {
        NBDSimpleReply(error: error, handle: handle).encoded()
    }

    /// Reads of `lengths` bytes at consecutive offsets, each in its own buffers cut into
    /// `pieces` (fractions of its length, the last taking the rest); returns each tag's
    /// completion and the bytes read, the counters read after.
    func read(_ server: ScriptedServer, lengths: [Int], pieces: Int = 1)
        async throws -> (completions: [UInt64: StorageCompletion], bytes: [UInt8], sends: Int, receives: Int, dryReceives: Int) {
        let uri = server.uri
        return try await withCleanup {
            return try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 32)
                defer { s.close() }
                let b = Buffers(byteCount: lengths.reduce(0, +), iovecCount: lengths.count * pieces)
                var at = 0
                var ops: [StorageOperation] = []
                for (i, length) in lengths.enumerated() {
                    var cut = [Int](repeating: length / pieces / 512 * 512, count: pieces - 1)
                    cut.append(length - cut.reduce(0, +))
                    ops.append(.read(tag: UInt64(i), offset: UInt64(at), buffers: b.vector(first: i * pieces, at: at, pieces: cut)))
                    at += length
                }
                var d = Driver(s)
                let r = try d.run(ops)
                return (r, Array(b.bytes), s.requestSends, s.replyReceives, s.replyDryReceives)
            }
        } cleanup: {
            await server.stop()
        }
    }

    /// The pattern of read `i`: its data differs from every other read's.
    static func pattern(_ i: Int, _ length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i &* 31 &+ 1) }
    }

    /// What `lengths` reads answered in order hold, laid end to end.
    static func expected(_ lengths: [Int]) -> [UInt8] {
        lengths.enumerated().flatMap { pattern($0.offset, $0.element) }
    }

    @Test func sixteenRepliesWaitingTogetherAreTakenInOneReceive() async throws {
        let lengths = [Int](repeating: 512, count: 16)
        let server = try ScriptedServer(requests: 16) { h, _ in
            // Answered in reverse order: the handle, not the position, picks the buffers.
            h.indices.reversed().flatMap { Self.simple(h[$0]) + Self.pattern($0, 512) }
        }
        let r = try await read(server, lengths: lengths)
        #expect(r.completions.count == 16 && r.completions.values.allSatisfy(\.succeeded))
        #expect(r.bytes == Self.expected(lengths))
        // One submit, one send; the 8.4 KB of replies in one write, one receive (two, were
        // the kernel to cut them): reading header and data apart took 32.
        #expect(r.sends == 1)
        #expect(r.receives >= 1 && r.receives <= 2, "\(r.receives) receives")
    }

    /// Replies in two bursts 50 ms apart: a receive that read the first burst dry is
    /// followed by a poll, not by a `recv` that could only fail with EAGAIN. (The reader's
    /// first look, before any reply was sent, may find nothing: at most that one.)
    @Test func aReaderThatReadTheSocketDryPollsBeforeItReceivesAgain() async throws {
        let lengths = [Int](repeating: 512, count: 16)
        let server = try ScriptedServer(chunk: 8 * (NBDSimpleReply.size + 512), pause: .milliseconds(50), requests: 16) { h, _ in
            h.indices.flatMap { Self.simple(h[$0]) + Self.pattern($0, 512) }
        }
        let r = try await read(server, lengths: lengths)
        #expect(r.completions.count == 16 && r.completions.values.allSatisfy(\.succeeded))
        #expect(r.bytes == Self.expected(lengths))
        #expect(r.receives >= 2, "\(r.receives) receives")
        #expect(r.dryReceives <= 1, "\(r.dryReceives) receives found nothing")
    }

    @Test func writesOfOneSubmitGoOutInOneSendWithTheirData() async throws {
        let count = 8
        let server = try ScriptedServer(requests: count) { h, _ in h.flatMap { Self.simple($0) } }
        try await withCleanup {
            let uri = server.uri
            let (r, sends) = try await onThread {
                let s = try NBDStorage(uri: uri, queueDepth: 32)
                defer { s.close() }
                let b = Buffers(byteCount: count * 4096, iovecCount: count * 2)
                var d = Driver(s)
                // Each write over two buffers, so the gathered send interleaves headers and data.
                let ops: [StorageOperation] = (0..<count).map {
                    .write(tag: UInt64($0), offset: UInt64($0) * 8192, buffers: b.vector(first: $0 * 2, at: $0 * 4096, pieces: [1024, 3072]))
                }
                return (try d.run(ops), s.requestSends)
            }
            #expect(r.count == count && r.values.allSatisfy(\.succeeded))
            #expect(sends == 1)
            // The server read each header and then its length of data: the stream stayed in step.
            let seen = server.received.first ?? []
            #expect(seen.map(\.offset) == (0..<count).map { UInt64($0) * 8192 })
            #expect(seen.allSatisfy { $0.command == .write && $0.length == 4096 })
        } cleanup: {
            await server.stop()
        }
    }

    /// A server that sends its replies a byte at a time: headers and data cut everywhere,
    /// a failed read between good ones, and a read long enough to be read straight into
    /// its three buffers.
    @Test func repliesCutIntoSingleBytesArriveWhole() async throws {
        let lengths = [512, 96 << 10, 4096, 512]
        let server = try ScriptedServer(chunk: 1, requests: lengths.count) { h, _ in
            var bytes: [UInt8] = []
            for (i, handle) in h.enumerated() {
                bytes += i == 2 ? Self.simple(handle, error: .noSpace) : Self.simple(handle) + Self.pattern(i, lengths[i])
            }
            return bytes
        }
        let r = try await read(server, lengths: lengths, pieces: 3)
        #expect(r.completions.count == lengths.count)
        #expect(r.completions[2]?.error?.code == .io(.noSpace))
        for i in [0, 1, 3] { #expect(r.completions[UInt64(i)]?.succeeded == true) }
        var expected = Self.expected(lengths)
        let third = lengths[0] + lengths[1]
        expected.replaceSubrange(third..<third + 4096, with: [UInt8](repeating: 0, count: 4096))
        #expect(r.bytes == expected)
    }

    /// A long read's data goes from the socket into its buffers; the short replies behind
    /// it in the same write are then parsed from the buffer.
    @Test func aLongReadAmongShortOnesInOneWrite() async throws {
        let lengths = [512, 256 << 10, 512, 4096, 300 << 10, 512]
        let server = try ScriptedServer(requests: lengths.count) { h, _ in
            h.indices.flatMap { Self.simple(h[$0]) + Self.pattern($0, lengths[$0]) }
        }
        let r = try await read(server, lengths: lengths, pieces: 2)
        #expect(r.completions.count == lengths.count && r.completions.values.allSatisfy(\.succeeded))
        #expect(r.bytes == Self.expected(lengths))
    }
}
