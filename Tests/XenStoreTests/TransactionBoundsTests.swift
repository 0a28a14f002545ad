import Foundation
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// What a transaction can make the store hold is capped, and costs nothing until touched.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct TransactionBoundsTests {
    static let guest = DomainID(5)

    /// A guest socket whose domain owns its home, as a toolstack sets it up.
    func guestServer(_ q: XenStoreQuotas = XenStoreQuotas()) async throws -> TestServer {
        let s = try TestServer(guests: [Self.guest], quotas: q)
        let dom0 = try s.client()
        try await dom0.mkdir("/local/domain/5")
        try await dom0.setPermissions("/local/domain/5", XenStorePermissions(owner: Self.guest))
        dom0.close()
        return s
    }

    @Test func writingThenRemovingUniqueNamesInOneTransactionStopsAtTheQuota() async throws {
        var q = XenStoreQuotas()
        q.transactionNodes = 200
        let s = try await guestServer(q)
        let raw = try RawConnection(s.guestPaths[Self.guest]!)
        let tx = try await raw.startTransaction()
        var refusedAt: Int?
        for i in 0..<2000 where refusedAt == nil {
            let w = try await raw.write("/local/domain/5/u\(i)", "x", tx: tx)
            if w.type == .error {
                #expect(w.text == "ENOSPC")
                refusedAt = i
                break
            }
            let r = try await raw.request(.rm, tx: tx, ["/local/domain/5/u\(i)"])
            if r.type == .error {
                #expect(r.text == "ENOSPC")
                refusedAt = i
            }
        }
        #expect(refusedAt != nil)
        let footprint = try #require(await s.server.withEngine { $0.transactionFootprint })
        // One request may overshoot by the nodes its path names (here, a handful).
        #expect(footprint <= q.transactionNodes + 8)
        // Ending it frees everything, and the connection carries on.
        #expect(try await raw.request(.transactionEnd, tx: tx, ["F"]).text == "OK")
        #expect(await s.server.withEngine { $0.transactionFootprint } == 0)
        #expect(try await raw.write("/local/domain/5/after", "ok").text == "OK")
        await s.stop()
    }

    @Test func readingAbsentPathsInOneTransactionStopsAtTheQuota() async throws {
        var q = XenStoreQuotas()
        q.transactionNodes = 300
        let s = try await guestServer(q)
        let raw = try RawConnection(s.guestPaths[Self.guest]!)
        let tx = try await raw.startTransaction()
        var codes: Set<String> = []
        for i in 0..<3000 {
            let r = try await raw.request(.read, tx: tx, ["/local/domain/5/absent-\(i)"])
            codes.insert(r.text)
            if r.text == "ENOSPC" { break }
        }
        #expect(codes.contains("ENOSPC"))
        #expect(try #require(await s.server.withEngine { $0.transactionFootprint }) <= q.transactionNodes + 8)
        let other = try s.client()
        try await other.write("/still", "fine")
        #expect(try await other.read("/still") == "fine")
        await s.stop()
    }

    /// Two transactions that create nodes under different parents do not conflict; each
    /// fits the node quota alone, and together they would not. The second commit must be
    /// refused with the errno a write over the quota gets (`ENOSPC`), not let the guest
    /// end over its quota.
    @Test func parallelTransactionsCannotTogetherExceedTheNodeQuota() async throws {
        var q = XenStoreQuotas()
        q.nodesPerDomain = 20
        let s = try await guestServer(q)
        let first = try RawConnection(s.guestPaths[Self.guest]!)
        let second = try RawConnection(s.guestPaths[Self.guest]!)
        // The guest owns its home, a and b: 3 nodes.
        #expect(try await first.request(.mkdir, ["/local/domain/5/a"]).text == "OK")
        #expect(try await first.request(.mkdir, ["/local/domain/5/b"]).text == "OK")
        let txA = try await first.startTransaction()
        let txB = try await second.startTransaction()
        for i in 0..<10 {
            #expect(try await first.write("/local/domain/5/a/\(i)", "x", tx: txA).text == "OK")
            #expect(try await second.write("/local/domain/5/b/\(i)", "x", tx: txB).text == "OK")
        }
        // Alone, each would leave the guest with 13 nodes of its 20.
        #expect(try await first.request(.transactionEnd, tx: txA, ["T"]).text == "OK")
        let commitB = try await second.request(.transactionEnd, tx: txB, ["T"])
        #expect(commitB.type == .error)
        #expect(commitB.text == "ENOSPC")
        // Nothing of the refused transaction landed, and the guest stays within its quota:
        // 13 nodes, so 7 more fit and the 8th does not.
        #expect(try await first.request(.read, ["/local/domain/5/b/0"]).text == "ENOENT")
        #expect(try await first.request(.read, ["/local/domain/5/a/9"]).text == "x")
        for i in 0..<7 { #expect(try await first.write("/local/domain/5/c\(i)", "x").text == "OK") }
        #expect(try await first.write("/local/domain/5/c7", "x").text == "ENOSPC")
        // A transaction that removes as many as it creates still commits at the quota.
        let txC = try await second.startTransaction()
        #expect(try await second.request(.rm, tx: txC, ["/local/domain/5/c0"]).text == "OK")
        #expect(try await second.write("/local/domain/5/d", "x", tx: txC).text == "OK")
        #expect(try await second.request(.transactionEnd, tx: txC, ["T"]).text == "OK")
        #expect(try await first.request(.read, ["/local/domain/5/d"]).text == "x")
        await s.stop()
    }

    @Test func dom0HasATransactionCapToo() async throws {
        var q = XenStoreQuotas()
        q.dom0TransactionsPerConnection = 5
        let s = try TestServer(quotas: q)
        let raw = try RawConnection(s.path)
        for _ in 0..<5 { _ = try await raw.startTransaction() }
        let r = try await raw.request(.transactionStart, [""])
        #expect(r.type == .error)
        #expect(r.text == "ENOSPC")
        await s.stop()
    }

    @Test func aTransactionDoesNotCopyTheTreeAndStillDetectsConflicts() async throws {
        let s = try TestServer()
        let raw = try RawConnection(s.path)
        for i in 0..<500 { _ = try await raw.write("/many/\(i)", "v") }
        let tx = try await raw.startTransaction()
        #expect(try await raw.write("/many/0", "in-tx", tx: tx).text == "OK")
        // The transaction remembers the node it wrote and the ones it looked up, not the store.
        #expect(try #require(await s.server.withEngine { $0.transactionFootprint }) < 10)
        #expect(try await raw.request(.read, tx: tx, ["/many/0"]).text == "in-tx")
        #expect(try await raw.request(.read, ["/many/0"]).text == "v")
        // A change elsewhere to a node it read makes the commit fail with EAGAIN.
        #expect(try await raw.request(.read, tx: tx, ["/many/1"]).text == "v")
        #expect(try await raw.write("/many/1", "changed").text == "OK")
        #expect(try await raw.request(.transactionEnd, tx: tx, ["T"]).text == "EAGAIN")
        #expect(try await raw.request(.read, ["/many/0"]).text == "v")
        // Without a conflict it commits, removals included.
        let tx2 = try await raw.startTransaction()
        #expect(try await raw.write("/many/0", "committed", tx: tx2).text == "OK")
        #expect(try await raw.request(.rm, tx: tx2, ["/many/2"]).text == "OK")
        #expect(try await raw.write("/many/new/deep", "d", tx: tx2).text == "OK")
        #expect(try await raw.request(.transactionEnd, tx: tx2, ["T"]).text == "OK")
        #expect(try await raw.request(.read, ["/many/0"]).text == "committed")
        #expect(try await raw.request(.read, ["/many/2"]).text == "ENOENT")
        #expect(try await raw.request(.read, ["/many/new/deep"]).text == "d")
        let listing = try await raw.request(.directory, ["/many"])
        let names = try listing.strings()
        #expect(names.count == 500 && !names.contains("2") && names.last == "new")
        await s.stop()
    }
}

/// Directory size and permission changes.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct TreeShapeTests {
    @Test func aLargeDirectoryCostsLinearTime() throws {
        // 20,000 children added and removed on the engine: quadratic list operations
        // would take minutes here; the suite's time limit is the check.
        let engine = XenStoreEngine()
        let n = 20000
        for i in 0..<n { _ = engine.perform(XenStoreMessage(type: .write, strings: ["/wide/c\(i)"]), as: .dom0) }
        for i in stride(from: 0, to: n, by: 2) {
            #expect(engine.perform(XenStoreMessage(type: .rm, strings: ["/wide/c\(i)"]), as: .dom0).text == "OK")
        }
        let part = engine.perform(XenStoreMessage(type: .directoryPart, strings: ["/wide", "0"]), as: .dom0)
        let names = try part.strings()
        #expect(names.dropFirst().first == "c1")
        #expect(engine.nodeCount == n / 2 + 2)
    }

    @Test func aNonOwnerWithBothAccessCannotRewriteTheACL() async throws {
        let s = try TestServer(guests: [DomainID(2), DomainID(3)])
        let dom0 = try s.client()
        try await dom0.write("/shared/node", "v")
        // Owned by dom2; dom3 may read and write it.
        try await dom0.setPermissions("/shared/node", XenStorePermissions(
            owner: DomainID(2), grants: [XenStorePermission(.both, DomainID(3))]))
        let dom3 = try RawConnection(s.guestPaths[DomainID(3)]!)
        #expect(try await dom3.write("/shared/node", "written by 3").text == "OK")
        let r = try await dom3.request(.setPermissions, ["/shared/node", "b3"])
        #expect(r.type == .error)
        #expect(r.text == "EACCES")
        #expect(try await dom0.permissions("/shared/node").owner == DomainID(2))
        // The owner may, as long as it keeps the node.
        let dom2 = try RawConnection(s.guestPaths[DomainID(2)]!)
        #expect(try await dom2.request(.setPermissions, ["/shared/node", "n2", "r3"]).text == "OK")
        #expect(try await dom2.request(.setPermissions, ["/shared/node", "n3"]).text == "EPERM")
        await s.stop()
    }
}
