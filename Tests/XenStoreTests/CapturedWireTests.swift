import Foundation
import Testing
import XenABI
@testable import XenStore
import XenStoreServer

/// Requests as Xen's own client library (libxenstore, through xenstore-write, -read,
/// -ls, -chmod, -exists, -rm of xenstore-utils) put them on the wire, captured once
/// by a recording proxy in front of `xenpv xenstored`, with the replies it gave.
/// They are the store's wire ABI held still: each request frame decodes and encodes
/// back to the same bytes, and a fresh store answers the same sequence byte for byte.
@Suite(.timeLimit(.minutes(5)))
struct CapturedWireTests {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/xs-wire")
    /// The captures, in the order they ran against one store.
    static let sequence = ["write", "read", "list", "chmod", "exists", "rm"]

    static func load(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: directory.appendingPathComponent(name)))
    }

    static func frames(_ bytes: [UInt8]) throws -> [XenStoreMessage] {
        var decoder = XenStoreFrameDecoder()
        decoder.append(bytes)
        var messages: [XenStoreMessage] = []
        while let m = try decoder.next() { messages.append(m) }
        #expect(decoder.bufferedByteCount == 0, "trailing bytes after \(messages.count) frames")
        return messages
    }

    @Test(arguments: sequence)
    func libxenstoreFramesDecodeAndEncodeToTheSameBytes(_ name: String) throws {
        for part in ["request", "reply"] {
            let bytes = try Self.load("\(name).\(part)")
            let messages = try Self.frames(bytes)
            #expect(!messages.isEmpty)
            #expect(messages.flatMap { $0.encoded() } == bytes, "\(name).\(part)")
        }
    }

    @Test func aFreshStoreAnswersTheCapturedSequenceAsBefore() async throws {
        let s = try TestServer()
        for name in Self.sequence {
            // Each tool ran on a connection of its own (transaction ids are per connection).
            let connection = try RawConnection(s.path)
            let requests = try Self.frames(try Self.load("\(name).request"))
            let expected = try Self.load("\(name).reply")
            var replies: [UInt8] = []
            for request in requests {
                try await connection.send(request.encoded())
                let reply = try #require(try await connection.receive())
                replies += reply.encoded()
            }
            let (got, want) = (try Self.frames(replies), try Self.frames(expected))
            #expect(replies == expected, "\(name): \(got) vs \(want)")
        }
        await s.stop()
    }
}
