import Foundation
import TestSupport
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// Our client against our server over the Unix socket.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct ClientServerTests {
    @Test func readWriteDirectoryMkdirRm() async throws {
        let s = try TestServer()
        let c = try s.client()
        try await c.write("/vm/1/name", "guest")
        #expect(try await c.read("/vm/1/name") == "guest")
        // Parents are created implicitly, with empty values.
        #expect(try await c.read("/vm/1") == "")
        #expect(try await c.directory("/vm") == ["1"])
        try await c.mkdir("/vm/1/device")
        try await c.mkdir("/vm/1/device")  // existing: fine
        #expect(try await c.directory("/vm/1") == ["name", "device"])
        try await c.write("/vm/1/bin", bytes: [1, 0, 2])
        #expect(try await c.readBytes("/vm/1/bin") == [1, 0, 2])
        try await c.rm("/vm/1")
        #expect(try await c.exists("/vm/1/name") == false)
        #expect(try await c.readIfPresent("/vm/1") == nil)
        try await c.rm("/vm/1")  // absent with parent present: fine, as in Xen
        await #expect(throws: XenStoreError.self) { try await c.rm("/nope/deeper") }
        await #expect(throws: XenStoreError.self) { try await c.rm("/") }
        do {
            _ = try await c.read("/vm/1/name")
            Issue.record("read of a removed node succeeded")
        } catch {
            #expect(error.code == .noEntry)
        }
        await s.stop()
    }

    @Test func droppingAClientClosesItsConnection() async throws {
        let s = try TestServer()
        let kept = try s.client()
        try await kept.write("/k", "1")
        do {
            let temp = try s.client()
            try await temp.write("/t", "1")
            #expect(await s.server.connectionCount() == 2)
            // `temp` goes out of scope here without close().
        }
        #expect(await eventually { await s.server.connectionCount() == 1 })
        #expect(try await kept.read("/t") == "1")
        await s.stop()
    }

    /// `withEngine`'s async form answers with the engine the clients see; once the server
    /// is stopped it is nil.
    @Test func theAsyncWithEngineAnswersAndIsNilOnceStopped() async throws {
        let s = try TestServer()
        let c = try s.client()
        try await c.write("/seen", "v")
        let read = await s.server.withEngine { $0.perform(XenStoreMessage(type: .read, strings: ["/seen"]), as: .dom0).text }
        #expect(read == "v")
        c.close()
        #expect(await s.stop())
        #expect(await s.server.withEngine { _ in 1 } == nil)
    }

    /// A loop that never runs the body (here, a server never started) leaves the async form
    /// nil after its bound instead of suspending the caller for ever.
    @Test func theAsyncWithEngineIsNilWhenTheLoopNeverAnswers() async {
        let server = XenStoreServer(socketPath: "/tmp/xs-idle-\(UUID().uuidString.prefix(8)).sock", logger: quietLogger())
        #expect(await server.withEngine { _ in 1 } == nil)
    }

    @Test func domainPathAndRelativePaths() async throws {
        let s = try TestServer(guests: [DomainID(3)])
        let dom0 = try s.client()
        #expect(try await dom0.domainPath(DomainID(3)) == "/local/domain/3")
        try await dom0.mkdir("/local/domain/3")
        try await dom0.setPermissions("/local/domain/3", XenStorePermissions(owner: DomainID(3)))
        let g = try s.client(as: DomainID(3))
        try await g.write("data/x", "1")
        #expect(try await dom0.read("/local/domain/3/data/x") == "1")
        #expect(try await g.read("data/x") == "1")
        // A node created by the guest is owned by it.
        #expect(try await dom0.permissions("/local/domain/3/data/x").owner == DomainID(3))
        await s.stop()
    }

    @Test func invalidPathsAreRejected() async throws {
        let s = try TestServer()
        let c = try s.client()
        for bad in ["/a//b", "/a/", "/a b", "/a/ü", String(repeating: "/x", count: 1600)] {
            do {
                try await c.write(bad, "v")
                Issue.record("accepted \(bad.prefix(20))")
            } catch {
                #expect(error.code == .invalid)
            }
        }
        await s.stop()
    }

    @Test func permissionsAreEnforcedForGuests() async throws {
        let s = try TestServer(guests: [DomainID(1), DomainID(2)])
        let dom0 = try s.client()
        try await dom0.write("/secret/key", "42")
        try await dom0.write("/shared/key", "7")
        try await dom0.setPermissions("/shared/key", XenStorePermissions(owner: .dom0, grants: [.init(.read, DomainID(1))]))
        let d1 = try s.client(as: DomainID(1))
        let d2 = try s.client(as: DomainID(2))
        // dom0 may do anything; a domU only what it was given.
        await expectCode(.accessDenied) { _ = try await d1.read("/secret/key") }
        await expectCode(.accessDenied) { try await d1.write("/secret/key", "x") }
        await expectCode(.accessDenied) { try await d1.write("/secret/new", "x") }
        await expectCode(.accessDenied) { try await d1.rm("/secret/key") }
        #expect(try await d1.read("/shared/key") == "7")
        await expectCode(.accessDenied) { try await d1.write("/shared/key", "8") }
        await expectCode(.accessDenied) { _ = try await d2.read("/shared/key") }
        // Absence does not leak through an unreadable parent.
        await expectCode(.accessDenied) { _ = try await d1.read("/secret/absent") }
        // An owner may change permissions but not give the node away.
        try await dom0.write("/local/domain/1/mine", "v")
        try await dom0.setPermissions("/local/domain/1/mine", XenStorePermissions(owner: DomainID(1)))
        try await d1.setPermissions("mine", XenStorePermissions(owner: DomainID(1), grants: [.init(.read, DomainID(2))]))
        #expect(try await d2.read("/local/domain/1/mine") == "v")
        await expectCode(.notPermitted) { try await d1.setPermissions("mine", XenStorePermissions(owner: DomainID(2))) }
        await expectCode(.accessDenied) { try await d2.setPermissions("/local/domain/1/mine", XenStorePermissions(owner: DomainID(2))) }
        // Privileged operations.
        await expectCode(.accessDenied) {
            _ = try await d1.request(.introduce, payload: XenStoreMessage(type: .introduce, strings: ["5", "1", "1"]).payload)
        }
        await s.stop()
    }

    @Test func watchesFireOnRegistrationAndOnChangesBelow() async throws {
        let s = try TestServer()
        let c = try s.client()
        let w = try await c.watch("/dev")
        var it = w.makeAsyncIterator()
        #expect(await it.next()?.path == "/dev")  // fires once when set, as Xen does
        try await c.write("/dev/vbd/51712/state", "1")
        #expect(await it.next()?.path == "/dev/vbd/51712/state")
        try await c.write("/other", "x")  // not below: no event
        try await c.rm("/dev/vbd")
        #expect(await it.next()?.path == "/dev/vbd")
        // A watch below a removed subtree hears about it under its own path.
        try await c.write("/dev/a/b/c", "1")
        #expect(await it.next()?.path == "/dev/a/b/c")
        let inner = try await c.watch("/dev/a/b")
        var it2 = inner.makeAsyncIterator()
        #expect(await it2.next()?.path == "/dev/a/b")
        try await c.rm("/dev/a")
        #expect(await it2.next()?.path == "/dev/a/b")
        #expect(await it.next()?.path == "/dev/a")
        w.cancel()
        inner.cancel()
        await s.stop()
    }

    @Test func relativeWatchesReportRelativePaths() async throws {
        let s = try TestServer(guests: [DomainID(4)])
        let dom0 = try s.client()
        try await dom0.mkdir("/local/domain/4")
        try await dom0.setPermissions("/local/domain/4", XenStorePermissions(owner: DomainID(4)))
        let g = try s.client(as: DomainID(4))
        let w = try await g.watch("device")
        var it = w.makeAsyncIterator()
        #expect(await it.next()?.path == "device")
        try await dom0.write("/local/domain/4/device/vif/0/state", "1")
        #expect(await it.next()?.path == "device/vif/0/state")
        // A guest does not hear about nodes it cannot read.
        try await dom0.write("/local/domain/4/device/hidden", "x")
        try await dom0.setPermissions("/local/domain/4/device/hidden", XenStorePermissions(owner: .dom0))
        try await dom0.write("/local/domain/4/device/hidden", "y")
        try await dom0.write("/local/domain/4/device/seen", "z")
        let next = await it.next()?.path
        #expect(next == "device/hidden" || next == "device/seen")  // the chmod's own event was still readable
        w.cancel()
        await s.stop()
    }

    @Test func specialWatchesFireOnIntroduceAndRelease() async throws {
        let s = try TestServer()
        let c = try s.client()
        let intro = try await c.watch("@introduceDomain")
        let rel = try await c.watch("@releaseDomain")
        var i1 = intro.makeAsyncIterator()
        var i2 = rel.makeAsyncIterator()
        #expect(await i1.next()?.path == "@introduceDomain")
        #expect(await i2.next()?.path == "@releaseDomain")
        _ = try await c.request(.introduce, payload: XenStoreMessage(type: .introduce, strings: ["7", "1234", "3"]).payload)
        #expect(await i1.next()?.path == "@introduceDomain")
        let yes = try await c.request(.isDomainIntroduced, payload: XenStoreMessage(type: .isDomainIntroduced, strings: ["7"]).payload)
        #expect(yes.text == "T")
        _ = try await c.request(.release, payload: XenStoreMessage(type: .release, strings: ["7"]).payload)
        #expect(await i2.next()?.path == "@releaseDomain")
        let no = try await c.request(.isDomainIntroduced, payload: XenStoreMessage(type: .isDomainIntroduced, strings: ["7"]).payload)
        #expect(no.text == "F")
        intro.cancel()
        rel.cancel()
        await s.stop()
    }

    @Test func transactionsCommitAtomicallyAndConflictWithEAGAIN() async throws {
        let s = try TestServer()
        let a = try s.client()
        let b = try s.client()
        try await a.write("/counter", "0")
        // Raw transactions: two overlapping ones, the second commit must fail.
        let t1 = try await a.request(.transactionStart, payload: [0]).text
        let t2 = try await b.request(.transactionStart, payload: [0]).text
        let x1 = XenStoreTransaction(client: a, id: UInt32(t1)!)
        let x2 = XenStoreTransaction(client: b, id: UInt32(t2)!)
        #expect(try await x1.read("/counter") == "0")
        #expect(try await x2.read("/counter") == "0")
        try await x1.write("/counter", "1")
        try await x2.write("/counter", "1")
        #expect(try await b.read("/counter") == "0")  // not visible before commit
        _ = try await a.request(.transactionEnd, payload: Array("T\0".utf8), transaction: x1.id)
        await expectCode(.again) { _ = try await b.request(.transactionEnd, payload: Array("T\0".utf8), transaction: x2.id) }
        #expect(try await b.read("/counter") == "1")
        // The retrying helper: 8 clients incrementing concurrently lose no update.
        let clients = try (0..<8).map { _ in try s.client() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for c in clients {
                group.addTask {
                    for _ in 0..<5 {
                        try await c.transaction { tx in
                            let v = Int(try await tx.read("/counter"))!
                            try await tx.write("/counter", String(v + 1))
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await a.read("/counter") == "41")
        // Abort discards; an unknown transaction id is ENOENT.
        try? await a.transaction { tx in
            try await tx.write("/aborted", "x")
            throw XenStoreError(.invalid, "give up")
        }
        #expect(try await a.exists("/aborted") == false)
        await expectCode(.noEntry) { _ = try await XenStoreTransaction(client: a, id: 999).read("/counter") }
        await s.stop()
    }

    @Test func watchFiresOnCommitNotBefore() async throws {
        let s = try TestServer()
        let c = try s.client()
        let w = try await c.watch("/t")
        var it = w.makeAsyncIterator()
        _ = await it.next()
        try await c.transaction { tx in
            try await tx.write("/t/a", "1")
            try await tx.write("/t/b", "2")
        }
        let e1 = await it.next()?.path
        let e2 = await it.next()?.path
        #expect(Set([e1, e2]) == Set(["/t/a", "/t/b"]))
        w.cancel()
        await s.stop()
    }

    @Test func quotasAnswerWithXensErrors() async throws {
        var q = XenStoreQuotas()
        q.nodesPerDomain = 5
        q.watchesPerDomain = 2
        q.transactionsPerConnection = 2
        q.valueSize = 16
        let s = try TestServer(guests: [DomainID(9)], quotas: q)
        let dom0 = try s.client()
        try await dom0.mkdir("/local/domain/9")
        try await dom0.setPermissions("/local/domain/9", XenStorePermissions(owner: DomainID(9)))
        let g = try s.client(as: DomainID(9))
        // /local/domain/9 counts as one of its five.
        for i in 0..<4 { try await g.write("n\(i)", "v") }
        await expectCode(.noSpace) { try await g.write("n4", "v") }
        await expectCode(.noSpace) { try await g.write("n0", String(repeating: "x", count: 17)) }
        let w0 = try await g.watch("n0")
        let w1 = try await g.watch("n1")
        await expectCode(.tooBig) { _ = try await g.watch("n2") }
        // Ending a watch's sequence removes it and frees its slot.
        w0.cancel()
        #expect(await eventually { (try? await g.watch("n3")) != nil })
        _ = w1
        _ = try await g.request(.transactionStart, payload: [0])
        _ = try await g.request(.transactionStart, payload: [0])
        await expectCode(.noSpace) { _ = try await g.request(.transactionStart, payload: [0]) }
        // Permission entries per node: five at most for a guest.
        let g2 = try RawConnection(s.guestPaths[DomainID(9)]!)
        let six = ["n9", "r1", "r2", "r3", "r4", "r5"]
        #expect(try await g2.request(.setPermissions, ["/local/domain/9/n0"] + six).text == "ENOSPC")
        #expect(try await g2.request(.setPermissions, ["/local/domain/9/n0"] + six.dropLast()).text == "OK")
        // dom0 is not bound by default.
        for i in 0..<10 { try await dom0.write("/local/domain/9/z\(i)", String(repeating: "x", count: 64)) }
        await s.stop()
    }
}

func expectCode(_ code: XenStoreError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let e as XenStoreError {
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
