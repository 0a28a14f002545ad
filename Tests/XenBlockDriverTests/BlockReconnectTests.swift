import Foundation
import TestSupport
import Testing
import XenBlockBack
import XenBlockFront
import XenBlockProtocol
import XenBlockStorage
import XenLocks
import XenSimulator

@Suite(.timeLimit(.minutes(5)))
struct BlockReconnectTests {
    /// Writers stream writes; the backend goes away while their next requests sit on
    /// the ring unanswered, and comes back on fresh rings (a backend restart). Every
    /// acknowledged write must be on disk afterwards, and the callers whose requests were
    /// in flight just wait and complete.
    @Test func noAcknowledgedWriteIsLostAcrossABackendRestart() async throws {
        let bytes = 4 << 20
        let image = try TemporaryImage(bytes: bytes)
        let f = try BlockFixture(queues: 2, limits: BlockDeviceLimits(sectors: UInt64(bytes / 512), maxIndirectSegments: 64),
                                 persistentGrants: 1056) { _ in
            try image.storage()
        }
        try f.start()
        let fe = f.frontend
        let acknowledged = Acknowledged()  // 64 KiB block -> fill byte
        let gate = Gate()
        let writers = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for t in 0..<4 {
                    // Half of them on the queue thread, which stops and is replaced under them.
                    group.addTask(executorPreference: t % 2 == 0 ? fe.executor : nil) {
                        for round in 0..<12 {
                            if round == 3 { await gate.passed() }
                            let block = t * 16 + round
                            let fill = UInt8(truncatingIfNeeded: block &* 3 &+ 1)
                            try await fe.write(at: UInt64(block << 16), [UInt8](repeating: fill, count: 1 << 16))
                            acknowledged.map.withLock { $0[block] = fill }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        #expect(await eventually(30) { acknowledged.map.withLock { $0.count } == 12 })
        try f.stopBackend()
        gate.open()
        // Each writer's next write (one request) reaches a ring nobody serves.
        #expect(await eventually(30) {
            fe.counters.reduce(0) { $0 + $1.requests.load(ordering: .relaxed) - $1.responses.load(ordering: .relaxed) } == 4
        })
        await f.frontend.detached()
        for r in f.resources { #expect(r.release(sharer: f.sharer)) }
        f.resources = []
        #expect(acknowledged.map.withLock { $0.count } == 12)
        try f.shareAndMap()
        try f.startBackend()
        try f.frontend.attach(f.resources, info: f.info)
        try await withTimeout(30) { try await writers.value }
        let written = acknowledged.map.withLock { $0 }
        #expect(written.count == 48)
        try await withTimeout(20) {
            for (block, fill) in written {
                let back = try await fe.read(at: UInt64(block << 16), count: 1 << 16)
                #expect(back.allSatisfy { $0 == fill }, "block \(block)")
            }
        }
        #expect(try f.teardown().isEmpty)
    }
}

/// Holds every writer that reaches it until `open`, then lets all through, now and later.
final class Gate: Sendable {
    private let state = Locked<(isOpen: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiting = state.withLock { s in
            s.isOpen = true
            defer { s.waiting = [] }
            return s.waiting
        }
        for w in waiting { w.resume() }
    }

    /// Returns once the gate is open.
    func passed() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let open = state.withLock { s in
                if !s.isOpen { s.waiting.append(c) }
                return s.isOpen
            }
            if open { c.resume() }
        }
    }
}

final class Acknowledged: Sendable {
    let map = Locked<[Int: UInt8]>([:])
}
