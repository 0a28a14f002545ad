import CXen
import Foundation
import TestSupport
import Testing
import XenABI
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenRing

/// A backend that writes raw responses: the frontend must ignore a response naming no
/// request, map an unknown status to an error, and stop its queue (not crash) when the
/// response producer runs far ahead; callers still waiting are failed on shutdown.
@Suite(.timeLimit(.minutes(5)))
struct BlockHostileBackendTests {
    @Test func bogusResponsesAreCountedBadStatusesFailAndAnOverflowStopsTheQueue() async throws {
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048)) { _ in try MemoryStorage(byteCount: 1 << 20) }
        try f.shareAndMap()
        try f.frontend.attach(f.resources, info: f.info)
        var ring = try BackRing<blkif_request, blkif_response>(attachingTo: f.resources[0].ring.memory)
        let backEvents = try f.hv.dom0.openEventChannels()
        let backPort = try backEvents.bindInterdomain(remote: f.guest.domainID, remotePort: f.resources[0].port)
        let fe = f.frontend
        let callers = (0..<2).map { i in
            Task { () -> BlockFrontError.Code? in
                do {
                    _ = try await fe.read(at: UInt64(i * 512), count: 512)
                    return nil
                } catch let e as BlockFrontError { return e.code } catch { return nil }
            }
        }
        // Sleeps between looks: the callers issuing these reads need one of the pool's few threads.
        guard try await eventually(every: .milliseconds(1), { try ring.checkForRequests() >= 2 }) else {
            throw TimedOut(seconds: minimumDeadline)
        }
        _ = ring.nextRequest()
        let second = ring.nextRequest()
        let id = try #require(second.map { $0.id })
        ring.produce(BlockResponse(id: 999, operation: .read, status: .okay).encoded())       // names no request
        ring.produce(BlockResponse(id: id, operation: .read, status: BlkifStatus(7)).encoded()) // unknown status
        _ = ring.pushResponses()
        try backEvents.notify(backPort)
        #expect(await eventually { f.frontend.counters.first?.bogusResponses.load(ordering: .relaxed) == 1 })

        // A response producer far ahead: the queue stops instead of reading past the ring.
        SharedRingHeader(f.resources[0].ring.memory.base).responseProducer.store(1_000_000, ordering: .releasing)
        try backEvents.notify(backPort)
        try await Task.sleep(nanoseconds: 50_000_000)
        await f.frontend.detached()
        f.frontend.shutdown()
        var codes: [BlockFrontError.Code?] = []
        for c in callers { codes.append(try await withTimeout(20) { await c.value }) }
        // One caller got the unknown status as an error; the other, never answered, is failed.
        #expect(Set(codes.compactMap { $0 }) == [.badStatus, .closed])
        try backEvents.unbind(backPort)
        backEvents.close()
        #expect(try f.teardown().isEmpty)
    }
}
