import Synchronization
import SystemPackage
import Testing
import TestSupport
import XenBlockProtocol
import XenBlockStorage
import XenDriverRuntime
import XenRing

/// blkback answers a burst of completions in batches (``BlockPolling/backendBatch``):
/// blkfront gets the first responses while blkback still reaps the rest.
@Suite(.timeLimit(.minutes(5)))
struct BlockPublishingTests {
    @Test func aBurstOfCompletionsIsPublishedBatchByBatch() async throws {
        let engine = try GatedStorage(byteCount: 1 << 20)
        let f = try BlockFixture(limits: BlockDeviceLimits(sectors: 2048, maxIndirectSegments: 32)) { _ in engine }
        try f.shareAndMap()
        engine.watch(ring: f.resources[0].ring.memory.base)
        try f.startBackend()
        try f.frontend.attach(f.resources, info: f.info)
        let depth = 32
        let fe = f.frontend
        let reads = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<depth {
                    group.addTask { _ = try await fe.read(at: UInt64(i * 4096), count: 4096) }
                }
                try await group.waitForAll()
            }
        }
        // Every read at the engine, none completed: then all complete at once.
        #expect(await eventually { engine.submitted.load(ordering: .acquiring) == depth })
        engine.open()
        try await withTimeout(60) { try await reads.value }

        let reaps = engine.reaps.withLock { $0 }.filter { $0.returned > 0 }
        #expect(reaps.map(\.returned).reduce(0, +) == depth)
        #expect(reaps.allSatisfy { $0.returned <= BlockPolling.backendBatch })
        // Responses were on the ring before the last batch was reaped.
        #expect(reaps.count >= 2)
        #expect(reaps.last!.responsesBefore > reaps.first!.responsesBefore)
        #expect(try f.teardown().isEmpty)
    }
}

/// A memory disk that completes nothing until ``open()``, then all it holds and what
/// comes after; each reap notes how many responses the ring it serves had published.
final class GatedStorage: ForwardingStorage, @unchecked Sendable {
    // @unchecked: its queue thread drives it; the test reads only the atomics and `reaps`.
    let inner: any StorageEngine
    private let doorbell = EventFD()
    private let isOpen = Atomic<Bool>(false)
    private var ring: UnsafeMutableRawPointer?
    /// Operations passed to the engine so far.
    let submitted = Atomic<Int>(0)
    /// Every reap: what it returned, and the ring's response producer just before.
    let reaps = Mutex<[(returned: Int, responsesBefore: UInt32)]>([])

    init(byteCount: Int) throws { inner = try MemoryStorage(byteCount: byteCount) }

    /// The shared ring page whose response producer each reap records.
    func watch(ring base: UnsafeMutableRawPointer) { ring = base }

    /// Lets completions through from now on.
    func open() {
        isOpen.store(true, ordering: .releasing)
        doorbell.signal()
    }

    var completionDescriptor: FileDescriptor { FileDescriptor(rawValue: doorbell.descriptor) }
    var mayHaveCompletions: Bool { isOpen.load(ordering: .acquiring) && inner.mayHaveCompletions }

    func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        let n = try inner.submit(operations)
        submitted.add(n, ordering: .releasing)
        if isOpen.load(ordering: .acquiring) { doorbell.signal() }
        return n
    }

    func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard isOpen.load(ordering: .acquiring) else { return 0 }
        let before = ring.map { SharedRingHeader($0).responseProducer.load(ordering: .acquiring) } ?? 0
        let n = try inner.reap(into: completions, timeout: .zero)
        if n == 0 { doorbell.drain() }
        reaps.withLock { $0.append((n, before)) }
        return n
    }
}
