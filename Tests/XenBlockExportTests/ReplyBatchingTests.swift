import Foundation
import NBDProtocol
import TestSupport
import Testing
import XenBlockExport
import XenLocks

/// A task executor whose jobs wait until the test runs them, on a thread of its own, in
/// the order they came (and those they queue meanwhile, after them).
final class SteppedExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: `jobs` is behind its lock; jobs run on one thread at a time.
    private let jobs = Locked<[UnownedJob]>([])

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
    }

    var queued: Int { jobs.withLock { $0.count } }

    /// Runs jobs until none is queued.
    func runAll() async {
        await onThread { [self] in
            while let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                job.runSynchronously(on: asUnownedTaskExecutor())
            }
        }
    }
}

/// A memory disk on a ``SteppedExecutor`` whose reads wait at a gate until the test opens
/// it: their answers then come together, as blkfront's do when it collects a batch.
final class GatedDevice: BlockExportDevice, @unchecked Sendable {
    // @unchecked: `waiting` is behind its lock.
    let disk = MemoryBlockDevice(geometry: BlockExportGeometry(size: 1 << 20))
    let executor = SteppedExecutor()
    private let waiting = Locked<[CheckedContinuation<Void, Never>]>([])

    var exportGeometry: BlockExportGeometry? { disk.exportGeometry }
    var exportExecutor: (any TaskExecutor)? { executor }
    var readsAtTheGate: Int { waiting.withLock { $0.count } }

    func openGate() {
        for c in waiting.withLock({ w in defer { w = [] }; return w }) { c.resume() }
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws {
        await withCheckedContinuation { c in waiting.withLock { $0.append(c) } }
        try await disk.read(at: offset, into: buffer)
    }
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) async throws { try await disk.write(at: offset, from: buffer) }
    func flush() async throws {}
    func discard(at offset: UInt64, length: UInt64) async throws { try await disk.discard(at: offset, length: length) }
}

@Suite(.timeLimit(.minutes(5)))
struct ReplyBatchingTests {
    /// Replies that finish together go out in one `sendmsg` (one system call and one
    /// wake-up of the client for the lot), each whole and in the order they finished.
    @Test func repliesThatFinishTogetherGoOutInOneSend() async throws {
        let device = GatedDevice()
        let server = try BlockExportServer(device: device)
        let dir = try TemporaryDirectory(prefix: "xenpv-nbd-batch")
        defer { dir.remove() }
        let socket = dir.path("nbd.sock")
        try server.listen(on: .unix(socket))
        let pattern = (0..<(8 * 4096)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) }
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: pattern.count, alignment: 4096)
        defer { staging.deallocate() }
        staging.copyBytes(from: pattern)
        try await device.disk.write(at: 0, from: UnsafeRawBufferPointer(staging))

        let client = try await RawClient.inTransmission(socket)
        for i in 0..<8 {
            client.send(NBDRequest(command: .read, handle: UInt64(100 + i), offset: UInt64(i) * 4096, length: 4096).encoded())
        }
        // Each request's task starts on the executor and waits at the gate.
        #expect(await eventually { device.executor.queued == 8 })
        await device.executor.runAll()
        #expect(device.readsAtTheGate == 8)
        let before = server.counters
        device.openGate()
        await device.executor.runAll()

        var handles: [UInt64] = []
        for _ in 0..<8 {
            let header = try #require(client.receive(NBDSimpleReply.size))
            let reply = try NBDSimpleReply(decoding: header)
            #expect(reply.error == .ok)
            let i = Int(reply.handle) - 100
            let data = try #require(client.receive(4096))
            #expect(data == Array(pattern[(i * 4096)..<((i + 1) * 4096)]))
            handles.append(reply.handle)
        }
        #expect(handles.sorted() == (100..<108).map(UInt64.init))
        let after = server.counters
        #expect(after.replies - before.replies == 8)
        #expect(after.replySends - before.replySends == 1, "\(after.replySends - before.replySends) sends for 8 replies")
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)))
    }
}
