import Foundation
import TestSupport
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// Bad input costs only the connection that sends it; everyone else carries on.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct HostileInputTests {
    /// A well-behaved client still works on `s`.
    func othersCarryOn(_ s: TestServer) async throws {
        let c = try s.client()
        try await c.write("/still/alive", "yes")
        #expect(try await c.read("/still/alive") == "yes")
        c.close()
    }

    @Test func payloadOverTheMaximumClosesTheConnection() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        try await raw.send(header(type: XenStoreMessageType.write.rawValue, len: 4097) + [UInt8](repeating: 0x41, count: 100))
        #expect(await raw.isClosedByPeer())
        try await othersCarryOn(s)
        // Exactly XENSTORE_PAYLOAD_MAX is allowed.
        let ok = try RawConnection(s.path)
        let payload = Array("/max\0".utf8) + [UInt8](repeating: 0x42, count: 4096 - 5)
        try await ok.send(header(type: XenStoreMessageType.write.rawValue, len: 4096) + payload)
        let reply = try #require(try await ok.receive())
        #expect(reply.type == .write)  // dom0 is not bound by the entry-size quota
        await s.stop()
    }

    @Test func missingNulUnknownTypesAndBadArgumentsGetERROR() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        let cases: [(UInt32, [UInt8])] = [
            (XenStoreMessageType.read.rawValue, Array("/a".utf8)),  // no NUL
            (XenStoreMessageType.read.rawValue, Array("/a\0/b\0".utf8)),  // two strings for one
            (XenStoreMessageType.read.rawValue, []),  // nothing
            (999, Array("/a\0".utf8)),  // unknown type
            (XenStoreMessageType.watchEvent.rawValue, Array("/a\0t\0".utf8)),  // daemon-only types
            (XenStoreMessageType.error.rawValue, Array("EINVAL\0".utf8)),
            (XenStoreMessageType.invalid.rawValue, []),
            (XenStoreMessageType.watch.rawValue, Array("/a\0".utf8)),  // no token
            (XenStoreMessageType.transactionEnd.rawValue, Array("X\0".utf8)),
            (XenStoreMessageType.setPermissions.rawValue, Array("/a\0q7\0".utf8)),
            (XenStoreMessageType.getDomainPath.rawValue, Array("65535\0".utf8)),
            (XenStoreMessageType.directoryPart.rawValue, Array("/\0-1\0".utf8)),
            (XenStoreMessageType.write.rawValue, Array("/\(String(repeating: "p", count: 3100))\0v".utf8)),
            (XenStoreMessageType.read.rawValue, Array(String(repeating: "r", count: 2100).utf8) + [0]),
        ]
        for (i, (type, payload)) in cases.enumerated() {
            try await raw.send(header(type: type, req: UInt32(100 + i), len: UInt32(payload.count)) + payload)
            let reply = try #require(try await raw.receive(), "case \(i) closed the connection")
            #expect(reply.type == .error, "case \(i)")
            #expect(reply.requestID == UInt32(100 + i))
            #expect(XenStoreError.Code(rawValue: reply.text).isWireCode, "case \(i): \(reply.text)")
        }
        // The same connection still works.
        try await raw.send(XenStoreMessage(type: .write, requestID: 1, payload: Array("/ok\0v".utf8)).encoded())
        #expect(try await raw.receive()?.text == "OK")
        try await othersCarryOn(s)
        await s.stop()
    }

    @Test func aLengthShorterThanThePayloadOnlyConfusesThatConnection() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        // Declares 2 bytes of "/a\0": READ "/a" lacks its NUL; the stray NUL starts a header.
        try await raw.send(header(type: XenStoreMessageType.read.rawValue, len: 2) + Array("/a\0".utf8))
        #expect(try await raw.receive()?.type == .error)
        try await othersCarryOn(s)
        await s.stop()
    }

    @Test func halfAMessageThenSilenceStallsNobody() async throws {
        let s = try TestServer()
        let half = try RawConnection(s.path)
        try await half.send(header(type: XenStoreMessageType.write.rawValue, len: 100) + Array("/half\0".utf8))
        let halfHeader = try RawConnection(s.path)
        try await halfHeader.send([1, 0, 0])
        try await othersCarryOn(s)
        // Finishing the message later is still served.
        try await half.send([UInt8](repeating: 0x61, count: 94))
        #expect(try await half.receive()?.text == "OK")
        // It stops in time: only a server the half message stalls would not.
        #expect(await s.stop())
    }

    @Test func aGuestThatNeverReadsItsWatchEventsIsDisconnected() async throws {
        var q = XenStoreQuotas()
        q.queuedWatchEvents = 8
        let s = try TestServer(guests: [DomainID(4)], quotas: q)
        let setup = try s.client()
        try await setup.mkdir("/flood")
        try await setup.setPermissions("/flood", XenStorePermissions(owner: .dom0, others: .read))
        let lazy = try RawConnection(s.guestPaths[DomainID(4)]!)
        var small: Int32 = 4096
        setsockopt(lazy.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        try await lazy.send(XenStoreMessage(type: .watch, requestID: 1, strings: ["/flood", "tok"]).encoded())
        let writer = try s.client()
        var closed = false
        for i in 0..<20000 where !closed {
            try await writer.write("/flood/x", "\(i)")
            // A look in passing, not an assertion: "not closed yet" is the expected answer
            // until the queue overflows, so a short wait is the point here.
            if i % 500 == 499 { closed = await lazy.isClosedByPeer(timeout: 0.01) }
        }
        // isClosedByPeer reads, so give the server a last chance only if it had not closed yet.
        if !closed { closed = await lazy.isClosedByPeer() }
        #expect(closed)
        try await othersCarryOn(s)
        await s.stop()
    }

    @Test func aClientThatSendsButNeverReadsIsThrottledNotServedUnbounded() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        var small: Int32 = 4096
        setsockopt(raw.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let c = try s.client()
        try await c.write("/bp", String(repeating: "v", count: 1000))
        // 3000 reads of a 1000-byte value: ~3 MB of replies the client does not read yet.
        let count = 3000
        var batch: [UInt8] = []
        for i in 0..<count { batch += XenStoreMessage(type: .read, requestID: UInt32(i), strings: ["/bp"]).encoded() }
        let fd = raw.fd
        let requests = batch
        let sender = Thread {
            // Blocks once the server stops reading (back-pressure); finishes as we read.
            try? Sys.sendAll(fd, requests)
        }
        sender.start()
        // Replies queue once the server's socket buffer is full: ~3 MB of them, unread,
        // outgrow any socket buffer, so this happens whatever the scheduling.
        let queued = await eventually { (await s.server.peakQueuedReplyCount() ?? 0) > 1 }
        #expect(queued, "the server never had more than one reply queued for the client that does not read")
        // The server is throttling that client, and serving others meanwhile.
        try await c.write("/other", "x")
        #expect(try await c.read("/other") == "x")
        // Back-pressure, not an unbounded queue: at most `outstandingRequests` replies wait.
        let limit = XenStoreQuotas().outstandingRequests
        let peak = try #require(await s.server.peakQueuedReplyCount())
        #expect(peak > 1 && peak <= limit)
        for i in 0..<count {
            let r = try #require(try await raw.receive(), "closed at \(i)")
            #expect(r.requestID == UInt32(i))
            if r.requestID != UInt32(i) { break }
        }
        // And not at any point of the whole exchange.
        let finalPeak = try #require(await s.server.peakQueuedReplyCount())
        #expect(finalPeak <= limit)
        await s.stop()
    }

    @Test func manyPipelinedRequestsAreAnsweredInOrderUnderBackPressure() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        var batch: [UInt8] = []
        for i in 0..<200 {
            batch += XenStoreMessage(type: .write, requestID: UInt32(i), strings: ["/pipe/\(i)"]).encoded()
        }
        try await raw.send(batch)
        for i in 0..<200 {
            let r = try #require(try await raw.receive())
            #expect(r.requestID == UInt32(i))
        }
        await s.stop()
    }

    @Test func aWatchWhoseEventCouldExceedThePayloadMaximumIsRefused() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        let r = try await raw.request(.watch, ["/w", String(repeating: "t", count: 2000)])
        #expect(r.type == .error)
        #expect(r.text == "E2BIG")
        // The longest token that fits with the longest path is accepted, and its events fit.
        let token = String(repeating: "t", count: XenStoreLimits.payloadMax - XenStoreLimits.absolutePathMax - 2)
        #expect(try await raw.request(.watch, ["/w", token]).text == "OK")
        let deep = "/w/" + String(repeating: "d", count: 2900)
        let writer = try s.client()
        try await writer.write(deep, "x")
        var sawDeep = false
        while !sawDeep, let m = try await raw.receive() {
            #expect(m.payload.count <= XenStoreLimits.payloadMax)
            if m.type == .watchEvent, try m.strings().first == deep { sawDeep = true }
        }
        #expect(sawDeep)
        await s.stop()
    }

    @Test func aDirectoryOverThePayloadMaximumIsE2BIGAndReadableInParts() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        for i in 0..<200 { _ = try await raw.write("/wide/\(String(repeating: "n", count: 40))-\(i)", "") }
        let whole = try await raw.request(.directory, ["/wide"])
        #expect(whole.type == .error && whole.text == "E2BIG")
        // Each part: the generation, then listing bytes from the offset; the last part ends
        // with an empty name (libxenstore concatenates the bytes, as here).
        var listing: [UInt8] = []
        while true {
            let part = try await raw.request(.directoryPart, ["/wide", "\(listing.count)"])
            #expect(part.type == .directoryPart && part.payload.count <= XenStoreLimits.payloadMax)
            guard part.type == .directoryPart, let nul = part.payload.firstIndex(of: 0) else { break }
            let data = Array(part.payload[(nul + 1)...])
            if data == [0] || data.suffix(2) == [0, 0] {
                listing += data.dropLast()
                break
            }
            listing += data
        }
        let names = listing.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        #expect(names.count == 200)
        await s.stop()
    }
}
