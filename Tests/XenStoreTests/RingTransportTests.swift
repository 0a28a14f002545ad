import CXen
import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator
@testable import XenStore
@testable import XenStoreServer

/// The per-domain xenstore page on the simulated hypervisor: a guest's client talks to the
/// store through shared memory and an event channel; the server owns dom0's side.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct RingTransportTests {
    @Test func pageLayoutMatchesXsWireH() {
        #expect(MemoryLayout<xenstore_domain_interface>.size == 2076)
        #expect(XenStoreDomainRing.reqOffset == 0)
        #expect(XenStoreDomainRing.rspOffset == 1024)
        #expect(XenStoreDomainRing.reqConsOffset == 2048)
        #expect(XenStoreDomainRing.reqProdOffset == 2052)
        #expect(XenStoreDomainRing.rspConsOffset == 2056)
        #expect(XenStoreDomainRing.rspProdOffset == 2060)
        #expect(XenStoreDomainRing.errorOffset == 2072)
        #expect(XenStoreDomainRing.size == 1024)
    }

    @Test func bytesCrossTheRingsWithWrapAroundAndIndexChecks() throws {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        let guest = XenStoreDomainRing(page: page, side: .guest)
        let daemon = XenStoreDomainRing(page: page, side: .daemon)
        // Start near the 32-bit wrap so the free-running indices overflow mid-test.
        for off in [XenStoreDomainRing.reqConsOffset, XenStoreDomainRing.reqProdOffset] {
            page.storeBytes(of: UInt32.max - 700, toByteOffset: off, as: UInt32.self)
        }
        var sent: [UInt8] = []
        var got: [UInt8] = []
        var k: UInt8 = 0
        for round in 0..<50 {
            let chunk = (0..<(100 + round * 13)).map { _ in k &+= 1; return k }
            var off = 0
            while off < chunk.count {
                let n = try guest.write(chunk, from: off)
                off += n
                if n == 0 { got += try daemon.read(upTo: 333) }
            }
            sent += chunk
            got += try daemon.read(upTo: 1024)
        }
        #expect(got == sent)
        #expect(guest.readable == 0)
        // A producer index more than a ring ahead is refused, not trusted.
        let prod = page.load(fromByteOffset: XenStoreDomainRing.reqProdOffset, as: UInt32.self)
        page.storeBytes(of: prod &+ 1025, toByteOffset: XenStoreDomainRing.reqProdOffset, as: UInt32.self)
        #expect(throws: XenStoreError.self) { _ = try daemon.read(upTo: 10) }
        // So is a consumer index that claims to have read more than was written.
        let rspProd = page.load(fromByteOffset: XenStoreDomainRing.rspProdOffset, as: UInt32.self)
        page.storeBytes(of: rspProd &+ 2000, toByteOffset: XenStoreDomainRing.rspConsOffset, as: UInt32.self)
        #expect(throws: XenStoreError.self) { _ = try daemon.write([1, 2, 3]) }
    }

    final class World {
        let hv: SimulatedHypervisor
        let guest: SimulatedDomain
        let server: XenStoreServer
        let path: String

        init(quotas: XenStoreQuotas = XenStoreQuotas()) throws {
            hv = SimulatedHypervisor(dom0Frames: 64)
            guest = try hv.createDomain(frames: 64)
            path = "/tmp/xs-ring-\(UUID().uuidString.prefix(8)).sock"
            var logger = Logger(label: "ring-test")
            logger.logLevel = ProcessInfo.processInfo.environment["XS_TEST_LOG"] != nil ? .debug : .critical
            server = XenStoreServer(socketPath: path, quotas: quotas, logger: logger, hypervisor: hv.dom0)
            try server.start()
        }

        /// Stops the server and awaits its loop thread's end on a thread of its own, for at
        /// most `minimumDeadline`; whether it ended. Every test calls it at its end.
        @discardableResult
        func stop() async -> Bool {
            let server = server
            return await onThread { server.stop(timeout: minimumDeadline) }
        }

        /// The last resort of a test that threw before `stop()`: tells the loop to stop and
        /// waits for nothing (a deinit may run on a pool thread).
        deinit { server.stop(timeout: 0) }

        /// A guest client over its page, introduced to the server; its sends wait at most
        /// `sendTimeout` seconds for room in the request ring.
        func guestClient(sendTimeout: Double = 5) async throws -> XenStoreClient {
            let dom0 = try XenStoreClient(socketPath: path)
            let home = XenStorePath.home(of: guest.domainID)
            try await dom0.mkdir(home)
            try await dom0.setPermissions(home, XenStorePermissions(owner: guest.domainID))
            dom0.close()
            let transport = try XenStoreRingTransport(hypervisor: guest, sendTimeout: sendTimeout)
            try await server.introduceDomain(guest.domainID, ringRef: transport.ringRef, eventPort: transport.port)
            return XenStoreClient(transport: transport)
        }
    }

    @Test func aGuestUsesTheStoreThroughItsPage() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let intro = try await dom0.watch("@introduceDomain")
        var introEvents = intro.makeAsyncIterator()
        _ = await introEvents.next()
        let g = try await w.guestClient()
        #expect(await introEvents.next()?.path == "@introduceDomain")

        try await g.write("data/name", "guest")
        #expect(try await dom0.read("/local/domain/\(w.guest.domainID.rawValue)/data/name") == "guest")
        #expect(try await g.read("data/name") == "guest")
        #expect(try await g.domainPath(w.guest.domainID) == XenStorePath.home(of: w.guest.domainID))
        // Messages larger than the 1024-byte rings cross in pieces, both ways.
        let big = String(repeating: "x", count: 2000)
        try await g.write("data/big", big)
        #expect(try await g.read("data/big") == big)
        // Permissions apply to the ring's domain.
        try await dom0.write("/secret", "s")
        await expectCode(.accessDenied) { _ = try await g.read("/secret") }
        // Watches and transactions.
        let watch = try await g.watch("data")
        var events = watch.makeAsyncIterator()
        #expect(await events.next()?.path == "data")
        try await dom0.write("/local/domain/\(w.guest.domainID.rawValue)/data/x", "1")
        #expect(await events.next()?.path == "data/x")
        try await g.transaction { tx in
            try await tx.write("data/t1", "a")
            try await tx.write("data/t2", "b")
        }
        #expect(try await dom0.read("/local/domain/\(w.guest.domainID.rawValue)/data/t2") == "b")
        watch.cancel()

        // Release: the server unmaps the page and closes the port.
        let rel = try await dom0.watch("@releaseDomain")
        var relEvents = rel.makeAsyncIterator()
        _ = await relEvents.next()
        await w.server.releaseDomain(w.guest.domainID)
        #expect(await relEvents.next()?.path == "@releaseDomain")
        g.close()
        #expect(await w.stop())
        #expect(w.guest.outstanding().mappings.isEmpty)
    }

    @Test func introduceOverTheWireMapsTheGuestsPage() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let transport = try XenStoreRingTransport(hypervisor: w.guest)
        let d = String(w.guest.domainID.rawValue)
        _ = try await dom0.request(.introduce, payload: XenStoreMessage(
            type: .introduce, strings: [d, String(transport.ringRef.rawValue), String(transport.port.rawValue)]).payload)
        #expect(try await dom0.request(.isDomainIntroduced, payload: Array("\(d)\0".utf8)).text == "T")
        let g = XenStoreClient(transport: transport)
        try await dom0.write("/local/domain/\(d)/hello", "world")
        try await dom0.setPermissions("/local/domain/\(d)/hello", XenStorePermissions(owner: w.guest.domainID))
        #expect(try await g.read("hello") == "world")
        // A bad grant reference is refused, and nothing else breaks.
        await expectCode(.invalid) {
            _ = try await dom0.request(.introduce, payload: XenStoreMessage(type: .introduce, strings: ["77", "5", "1"]).payload)
        }
        #expect(try await g.read("hello") == "world")
        g.close()
        await w.stop()
    }

    /// The frame field is 64 bits on the wire and a grant reference 32: a frame of
    /// 2^32 + r must be refused (`EINVAL`), not truncated into grant r and mapped.
    @Test func anIntroduceFrameBeyondAGrantReferenceIsRefusedNotTruncated() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let transport = try XenStoreRingTransport(hypervisor: w.guest)
        let d = String(w.guest.domainID.rawValue)
        let port = String(transport.port.rawValue)
        for frame in [(UInt64(1) << 32) + UInt64(transport.ringRef.rawValue), UInt64.max] {
            await expectCode(.invalid) {
                _ = try await dom0.request(.introduce, payload: XenStoreMessage(
                    type: .introduce, strings: [d, String(frame), port]).payload)
            }
        }
        // Nothing was mapped and the domain is not introduced.
        #expect(await w.server.connectionCount() == 1)
        #expect(try await dom0.request(.isDomainIntroduced, payload: Array("\(d)\0".utf8)).text == "F")
        // The same page by its real reference is.
        _ = try await dom0.request(.introduce, payload: XenStoreMessage(
            type: .introduce, strings: [d, String(transport.ringRef.rawValue), port]).payload)
        #expect(await w.server.connectionCount() == 2)
        await w.stop()
    }

    /// The send timeout is fixed when the transport is made (the reader and senders share the
    /// transport across threads, so it is not a mutable field): a request ring nobody drains
    /// fails the send with `ETIMEDOUT`.
    @Test func aRequestRingNobodyDrainsTimesOutAfterTheTimeoutGivenAtCreation() async throws {
        let hv = SimulatedHypervisor(dom0Frames: 16)
        let guest = try hv.createDomain(frames: 16)
        let transport = try XenStoreRingTransport(hypervisor: guest, sendTimeout: 0.05)
        #expect(transport.sendTimeout == 0.05)
        // Never introduced: the 1024-byte ring fills and stays full. The send waits out its
        // timeout on a thread of its own, not the pool's.
        let sent = await onThread { Result { try transport.send([UInt8](repeating: 1, count: 2000)) } }
        let error = #expect(throws: XenStoreError.self) { try sent.get() }
        #expect(error?.code == .timedOut)
        #expect(try XenStoreRingTransport(hypervisor: guest).sendTimeout == 5)
    }

    /// A hand-made hostile guest: its own page and port, bytes written by hand.
    func hostileGuest(_ w: World) async throws -> (page: UnsafeMutableRawPointer, events: any EventChannels, port: EventPort) {
        let pages = try w.guest.openGrantSharer().sharePages(count: 1, with: .dom0, writable: true)
        let events = try w.guest.openEventChannels()
        let port = try events.bindUnbound(remote: .dom0)
        try await w.server.introduceDomain(w.guest.domainID, ringRef: pages.refs[0], eventPort: port)
        return (pages.memory.base, events, port)
    }

    func waitForError(_ page: UnsafeMutableRawPointer, _ code: Int32) async -> Bool {
        await eventually { page.load(fromByteOffset: XenStoreDomainRing.errorOffset, as: UInt32.self) == UInt32(code) }
    }

    @Test func aGuestThatCorruptsItsRingIndexIsCutOffAlone() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let h = try await hostileGuest(w)
        h.page.storeBytes(of: 100_000, toByteOffset: XenStoreDomainRing.reqProdOffset, as: UInt32.self)
        try h.events.notify(h.port)
        #expect(await waitForError(h.page, XENSTORE_ERROR_RINGIDX))
        try await dom0.write("/still", "fine")
        #expect(try await dom0.read("/still") == "fine")
        // Its connection is gone: the domain can be introduced again with a fresh page.
        let again = try XenStoreRingTransport(hypervisor: w.guest)
        try await w.server.introduceDomain(w.guest.domainID, ringRef: again.ringRef, eventPort: again.port)
        await w.stop()
    }

    /// After the server cuts a guest's ring off (for a bad index or a protocol error), dom0
    /// must be able to give the guest its store back: a later `XS_INTRODUCE` with a fresh page
    /// has to attach that page, not answer OK and leave the guest talking to nobody.
    @Test(arguments: ["index", "protocol"])
    func aGuestCutOffItsRingCanBeIntroducedAgain(_ attack: String) async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let d = w.guest.domainID.rawValue
        try await dom0.write("/local/domain/\(d)/name", "guest")
        try await dom0.setPermissions("/local/domain/\(d)/name", XenStorePermissions(owner: w.guest.domainID))
        let h = try await hostileGuest(w)
        if attack == "index" {
            h.page.storeBytes(of: 100_000, toByteOffset: XenStoreDomainRing.reqProdOffset, as: UInt32.self)
        } else {
            let ring = XenStoreDomainRing(page: h.page, side: .guest)
            #expect(try ring.write(header(type: XenStoreMessageType.write.rawValue, len: 5000)) == 16)
        }
        try h.events.notify(h.port)
        #expect(await waitForError(h.page, attack == "index" ? XENSTORE_ERROR_RINGIDX : XENSTORE_ERROR_PROTO))
        #expect(await eventually { await w.server.connectionCount() == 1 })  // dom0's socket only

        // dom0 introduces the guest again, over the wire as a toolstack does.
        let transport = try XenStoreRingTransport(hypervisor: w.guest)
        _ = try await dom0.request(.introduce, payload: XenStoreMessage(
            type: .introduce, strings: [String(d), String(transport.ringRef.rawValue), String(transport.port.rawValue)]).payload)
        // The fresh page is served: the server maps it (a connection more) and answers on it.
        #expect(await w.server.connectionCount() == 2)
        #expect(try await dom0.request(.isDomainIntroduced, payload: Array("\(d)\0".utf8)).text == "T")
        let g = XenStoreClient(transport: transport)
        // The deadline only stops a hang (a page nobody serves) from holding the suite.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(minimumDeadline))
            g.close()
        }
        defer { watchdog.cancel() }
        #expect(try await g.read("name") == "guest")
        g.close()
        dom0.close()
        #expect(await w.stop())
        #expect(w.guest.outstanding().mappings.isEmpty)
    }

    @Test func aGuestThatSendsAnOversizedMessageIsCutOffAlone() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let h = try await hostileGuest(w)
        let ring = XenStoreDomainRing(page: h.page, side: .guest)
        #expect(try ring.write(header(type: XenStoreMessageType.write.rawValue, len: 5000)) == 16)
        try h.events.notify(h.port)
        #expect(await waitForError(h.page, XENSTORE_ERROR_PROTO))
        try await dom0.write("/still", "fine")
        #expect(try await dom0.read("/still") == "fine")
        await w.stop()
    }

    @Test func requestsQueuedBeforeTheIntroduceAreServed() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        try await dom0.write("/local/domain/\(w.guest.domainID.rawValue)/early", "bird")
        try await dom0.setPermissions(
            "/local/domain/\(w.guest.domainID.rawValue)/early", XenStorePermissions(owner: w.guest.domainID))
        let transport = try XenStoreRingTransport(hypervisor: w.guest)
        let g = XenStoreClient(transport: transport)
        let early = Task { try await g.read("early") }
        try? await Task.sleep(nanoseconds: 50_000_000)  // the request sits in the ring; its notify went nowhere
        try await w.server.introduceDomain(w.guest.domainID, ringRef: transport.ringRef, eventPort: transport.port)
        #expect(try await withTimeout(5) { try await early.value } == "bird")
        g.close()
        await w.stop()
    }

    @Test func aGuestThatSendsHalfAMessageStallsNobody() async throws {
        let w = try World()
        let dom0 = try XenStoreClient(socketPath: w.path)
        let home = XenStorePath.home(of: w.guest.domainID)
        try await dom0.mkdir(home)
        try await dom0.setPermissions(home, XenStorePermissions(owner: w.guest.domainID))
        let h = try await hostileGuest(w)
        let ring = XenStoreDomainRing(page: h.page, side: .guest)
        _ = try ring.write(header(type: XenStoreMessageType.write.rawValue, len: 100) + Array("x\0a".utf8))
        try h.events.notify(h.port)
        try await dom0.write("/still", "fine")
        #expect(try await dom0.read("/still") == "fine")
        // The rest arrives later and is served.
        _ = try ring.write([UInt8](repeating: 0x61, count: 97))  // 100 minus the 3 sent
        try h.events.notify(h.port)
        var reply: [UInt8] = []
        _ = try await eventually {
            reply += try ring.read(upTo: 64)
            return reply.count >= 19
        }
        #expect(reply.count == 19)
        #expect(Array(reply.suffix(3)) == Array("OK\0".utf8))
        await w.stop()
    }
}
