import Foundation
import TestSupport
import Testing
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// A guest's event storm costs the guest, never a dom0 watcher.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct WatchStormTests {
    @Test func aLateDom0WatcherIsKeptAndTheStormingGuestIsHeldBack() async throws {
        var q = XenStoreQuotas()
        q.queuedWatchEvents = 16
        let guest = DomainID(6)
        let s = try TestServer(guests: [guest], quotas: q)
        let setup = try s.client()
        try await setup.mkdir("/local/domain/6")
        try await setup.setPermissions("/local/domain/6", XenStorePermissions(owner: guest))
        // dom0 watches the guest's home and then does not read for a while.
        let watcher = try RawConnection(s.path)
        var small: Int32 = 4096
        setsockopt(watcher.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        try await watcher.send(XenStoreMessage(type: .watch, requestID: 1, strings: ["/local/domain/6", "t"]).encoded())
        // The guest storms with pipelined writes, far more than the queue bound.
        let storm = try RawConnection(s.guestPaths[guest]!)
        let count = 2000
        var batch: [UInt8] = []
        for i in 0..<count {
            batch += XenStoreMessage(type: .write, requestID: UInt32(i),
                                     payload: Array("/local/domain/6/k\(i % 50)\0v".utf8)).encoded()
        }
        try await storm.send(batch)
        // The guest is held back before all its writes are answered... (the short wait is the
        // point: a held-back guest gets no reply, and a slow server only answers fewer here)
        var answered = 0
        while answered < count, let r = try? await storm.receive(timeout: 0.5) {
            #expect(r.type == .write)
            answered += 1
        }
        #expect(answered < count)
        // ...others are still served meanwhile...
        let other = try s.client()
        try await other.write("/unrelated", "ok")
        #expect(try await other.read("/unrelated") == "ok")
        // ...and when dom0 reads, it gets every event, and the guest is let go (the guest
        // reads its replies too, or its own outstanding-request bound holds it).
        // Short looks in turn at each connection, within minimumDeadline for the whole.
        var events = 0
        let deadline = Date().addingTimeInterval(minimumDeadline)
        while (events < count + 1 || answered < count) && Date() < deadline {
            if events < count + 1, let m = try? await watcher.receive(timeout: 0.02) {
                if m.type == .watchEvent { events += 1 }
            }
            if answered < count, let r = try? await storm.receive(timeout: 0.02) {
                #expect(r.type == .write && r.text == "OK")
                answered += 1
            }
        }
        #expect(answered == count)
        #expect(events == count + 1)  // the registration event and one per write
        await s.stop()
    }
}
