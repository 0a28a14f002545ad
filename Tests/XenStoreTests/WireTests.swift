import CXen
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// The codec against `io/xs_wire.h`.
@Suite(.timeLimit(.minutes(5)))
struct WireTests {
    @Test func headerLayoutAndLimitsMatchTheCHeader() {
        #expect(XenStoreLimits.headerSize == 16)
        #expect(MemoryLayout<xsd_sockmsg>.offset(of: \.type) == 0)
        #expect(MemoryLayout<xsd_sockmsg>.offset(of: \.req_id) == 4)
        #expect(MemoryLayout<xsd_sockmsg>.offset(of: \.tx_id) == 8)
        #expect(MemoryLayout<xsd_sockmsg>.offset(of: \.len) == 12)
        #expect(XenStoreLimits.payloadMax == 4096)
        #expect(XenStoreLimits.absolutePathMax == 3072)
        #expect(XenStoreLimits.relativePathMax == 2048)
        #expect(XenStoreMessageType.directoryPart.rawValue == XS_DIRECTORY_PART.rawValue)
        #expect(XenStoreMessageType.resetWatches.rawValue == XS_SET_TARGET.rawValue + 2)
        #expect(XenStoreMessageType.typeCount.rawValue == XS_TYPE_COUNT.rawValue)
    }

    @Test func errorNamesAreXsdErrorsInOrder() {
        // xsd_errors[] is a static array in the header; its order is part of the ABI.
        let expected = ["EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
                        "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM"]
        #expect(XenStoreError.Code.wireNames == expected)
        #expect(XenStoreError.Code.again.isWireCode)
        #expect(!XenStoreError.Code.protocolViolation.isWireCode)
    }

    @Test func encodesLikeTheCStruct() {
        let m = XenStoreMessage(type: .read, requestID: 0x01020304, transactionID: 5, strings: ["/a"])
        var c = xsd_sockmsg(type: XS_READ.rawValue, req_id: 0x01020304, tx_id: 5, len: 3)
        let header = withUnsafeBytes(of: &c) { Array($0) }
        #expect(m.encoded() == header + Array("/a\0".utf8))
    }

    @Test func decodesByteByByteAndInBatches() throws {
        let msgs = (0..<5).map { XenStoreMessage(type: .write, requestID: UInt32($0), payload: Array("/k\0v\($0)".utf8)) }
        let stream = msgs.flatMap { $0.encoded() }
        var d = XenStoreFrameDecoder()
        var got: [XenStoreMessage] = []
        for b in stream {
            d.append([b])
            while let m = try d.next() { got.append(m) }
        }
        #expect(got == msgs)
        var d2 = XenStoreFrameDecoder()
        d2.append(stream)
        var got2: [XenStoreMessage] = []
        while let m = try d2.next() { got2.append(m) }
        #expect(got2 == msgs)
        #expect(d2.bufferedByteCount == 0)
    }

    @Test func rejectsLengthsOverThePayloadMaximum() {
        var d = XenStoreFrameDecoder()
        d.append(header(type: 2, len: 4097))
        #expect(throws: XenStoreError.self) { try d.next() }
        var ok = XenStoreFrameDecoder()
        ok.append(header(type: 2, len: 4096))
        #expect((try? ok.next()) == .some(nil))  // waiting for the payload, not failing
        #expect(ok.bytesWanted == 4096)
    }

    @Test func stringsRequireTerminatingNul() throws {
        #expect(try XenStoreMessage(type: .watch, payload: Array("/a\0tok\0".utf8)).strings() == ["/a", "tok"])
        #expect(throws: XenStoreError.self) { try XenStoreMessage(type: .read, payload: Array("/a".utf8)).strings() }
    }

    @Test func pathsFollowXensRules() throws {
        #expect(try XenStorePath.resolve("device/vbd", for: DomainID(3)) == "/local/domain/3/device/vbd")
        #expect(try XenStorePath.resolve("/", for: .dom0) == "/")
        for bad in ["", "/a/", "//", "/a//b", "/a b", "/a\u{0}", "a/"] {
            #expect(throws: XenStoreError.self, "\(bad)") { try XenStorePath.resolve(bad, for: DomainID(1)) }
        }
        #expect(throws: XenStoreError.self) { try XenStorePath.resolve(String(repeating: "a", count: 2049), for: .dom0) }
        #expect(throws: XenStoreError.self) { try XenStorePath.resolve("/" + String(repeating: "a", count: 3072), for: .dom0) }
        #expect(XenStorePath.parent(of: "/a/b") == "/a")
        #expect(XenStorePath.parent(of: "/a") == "/")
        #expect(XenStorePath.isWithin("/a/b", "/a"))
        #expect(!XenStorePath.isWithin("/ab", "/a"))
    }

    @Test func permissionStringsAndAccess() throws {
        let p = try #require(XenStorePermissions(strings: ["n3", "r4", "b5", "w6"]))
        #expect(p.owner == DomainID(3))
        #expect(p.access(for: DomainID(3)) == .both)  // owner
        #expect(p.access(for: .dom0) == .both)  // privileged
        #expect(p.access(for: DomainID(4)) == .read)
        #expect(p.access(for: DomainID(5)) == .both)
        #expect(p.access(for: DomainID(6)) == .write)
        #expect(p.access(for: DomainID(7)) == XenStorePermission.Access.none)  // the default
        #expect(p.strings == ["n3", "r4", "b5", "w6"])
        for bad in ["", "x1", "r", "r-1", "r70000", "r 1", "r01"] {
            #expect(XenStorePermission(bad) == nil, "\(bad)")
        }
        #expect(XenStorePermissions(strings: []) == nil)
    }
}

/// The engine without a transport: what goes out for what comes in.
@Suite(.timeLimit(.minutes(5)))
struct EngineTests {
    func send(_ e: XenStoreEngine, _ c: XenStoreEngine.ConnectionID, _ m: XenStoreMessage) -> [XenStoreMessage] {
        e.handle(m, from: c)
        return e.takeOutbox().filter { $0.connection == c }.map(\.message)
    }

    @Test func replyEchoesIdsAndWatchEventFollowsTheOK() {
        let e = XenStoreEngine()
        let c = e.connect(domain: .dom0)
        let out = send(e, c, XenStoreMessage(type: .watch, requestID: 42, strings: ["/x", "tk"]))
        #expect(out.count == 2)
        #expect(out[0].type == .watch && out[0].requestID == 42 && out[0].text == "OK")
        #expect(out[1].type == .watchEvent)
        #expect(out[1].payload == Array("/x\0tk\0".utf8))
        let dup = send(e, c, XenStoreMessage(type: .watch, requestID: 43, strings: ["/x", "tk"]))
        #expect(dup.first?.type == .error && dup.first?.text == "EEXIST")
        let un = send(e, c, XenStoreMessage(type: .unwatch, requestID: 44, strings: ["/x", "tk"]))
        #expect(un.first?.text == "OK")
        let un2 = send(e, c, XenStoreMessage(type: .unwatch, requestID: 45, strings: ["/x", "tk"]))
        #expect(un2.first?.text == "ENOENT")
    }

    @Test func getPermsAndDirectoryPartFormats() {
        let e = XenStoreEngine()
        let c = e.connect(domain: .dom0)
        _ = send(e, c, XenStoreMessage(type: .write, payload: Array("/d/a\0".utf8)))
        _ = send(e, c, XenStoreMessage(type: .write, payload: Array("/d/bb\0".utf8)))
        _ = send(e, c, XenStoreMessage(type: .setPermissions, strings: ["/d", "n2", "r3"]))
        #expect(send(e, c, XenStoreMessage(type: .getPermissions, strings: ["/d"])).first?.payload == Array("n2\0r3\0".utf8))
        let part = send(e, c, XenStoreMessage(type: .directoryPart, strings: ["/d", "0"])).first!
        let parts = part.nulSeparatedParts().terminated
        #expect(parts.count == 4)  // generation, "a", "bb", and the empty end marker
        #expect(parts.dropFirst().map { String(decoding: $0, as: UTF8.self) } == ["a", "bb", ""])
        let from2 = send(e, c, XenStoreMessage(type: .directoryPart, strings: ["/d", "2"])).first!
        #expect(Array(from2.payload.drop { $0 != 0 }.dropFirst()) == Array("bb\0\0".utf8))
        let start = send(e, c, XenStoreMessage(type: .transactionStart, payload: [0])).first!
        #expect(UInt32(start.text) != nil && UInt32(start.text) != 0)
        let nested = send(e, c, XenStoreMessage(type: .transactionStart, transactionID: UInt32(start.text)!, payload: [0]))
        #expect(nested.first?.text == "EBUSY")
    }

    @Test func disconnectDropsWatchesAndTransactions() {
        var q = XenStoreQuotas()
        q.watchesPerDomain = 1
        let e = XenStoreEngine(quotas: q)
        let c1 = e.connect(domain: DomainID(5))
        #expect(send(e, c1, XenStoreMessage(type: .watch, strings: ["/x", "a"])).first?.text == "OK")
        let c2 = e.connect(domain: DomainID(5))
        #expect(send(e, c2, XenStoreMessage(type: .watch, strings: ["/y", "a"])).first?.text == "E2BIG")
        e.disconnect(c1)
        #expect(send(e, c2, XenStoreMessage(type: .watch, strings: ["/y", "a"])).first?.text == "OK")
    }
}
