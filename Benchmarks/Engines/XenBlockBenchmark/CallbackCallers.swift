import CXen
import XenBlockFront
import XenLocks

/// The benchmark's callers as chains of callbacks instead of tasks: each completion,
/// on blkfront's queue thread, records its latency and starts its caller's next
/// operation (`BlockFrontend.startRead`/`startWrite`: no task, no continuation), as a
/// server on blkfront does (the NBD export).
enum CallbackCallers {
    /// One caller: its buffer, its offsets, its latencies, and the callback it passes on
    /// each call (made once, holding its chain unowned: `run` keeps the chains; cleared
    /// when the caller ends, so a late call finds none).
    final class Chain: @unchecked Sendable {
        // @unchecked: one operation of a chain is in flight at a time, and its state is
        // touched only by whoever runs that operation's start or completion.
        let buffer: UnsafeMutableRawBufferPointer
        var generator: BenchGenerator
        var latencies: [UInt32] = []
        var started: UInt64 = 0
        var done: (@Sendable (BlockFrontError?) -> Void)?

        init(index: Int, blockSize: Int) {
            buffer = .allocate(byteCount: blockSize, alignment: 4096)
            for i in 0..<blockSize { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ index) }
            generator = BenchGenerator(state: UInt64(index) &* 0x9E37_79B9_7F4A_7C15 &+ cxen_monotonic_ns())
            latencies.reserveCapacity(1 << 16)
        }

        deinit { buffer.deallocate() }
    }

    /// Chains still running, the first error, and who waits for the last one to end.
    /// (`Locked`, not `Mutex`: ThreadSanitizer sees XenLocks' pthread mutexes.)
    final class Ending: Sendable {
        private struct State {
            var running: Int
            var failure: BlockFrontError?
            var waiter: CheckedContinuation<Void, Never>?
        }
        private let state: Locked<State>

        init(running: Int) { state = Locked(State(running: running)) }

        func wait() async {
            await withCheckedContinuation { c in
                let now = state.withLock { s -> Bool in
                    if s.running == 0 { return true }
                    s.waiter = c
                    return false
                }
                if now { c.resume() }
            }
        }

        func chainEnded(_ error: BlockFrontError?) {
            let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                if s.failure == nil { s.failure = error }
                s.running -= 1
                guard s.running == 0 else { return nil }
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume()
        }

        var failure: BlockFrontError? { state.withLock { $0.failure } }
    }

    /// Runs `c.queueDepth` chains until `deadline` (monotonic ns; each does at least one
    /// operation); every latency in units of 10 ns.
    static func run(_ frontend: BlockFrontend, _ c: BlockBenchmarkConfiguration, blocks: UInt64, cursor: Cursor,
                    deadline: UInt64) async throws -> [UInt32] {
        let chains = (0..<c.queueDepth).map { Chain(index: $0, blockSize: c.blockSize) }
        let ending = Ending(running: chains.count)
        for chain in chains {
            chain.done = { [unowned chain] error in
                let now = cxen_monotonic_ns()
                chain.latencies.append(UInt32(clamping: (now - chain.started) / 10))
                if error == nil && now < deadline {
                    issue(chain, frontend, c, blocks: blocks, cursor: cursor)
                } else {
                    chain.done = nil
                    ending.chainEnded(error)
                }
            }
        }
        for chain in chains { issue(chain, frontend, c, blocks: blocks, cursor: cursor) }
        await ending.wait()
        if let failure = ending.failure { throw failure }
        return chains.flatMap(\.latencies)
    }

    private static func issue(_ chain: Chain, _ frontend: BlockFrontend, _ c: BlockBenchmarkConfiguration,
                              blocks: UInt64, cursor: Cursor) {
        let block = c.pattern.isRandom ? UInt64.random(in: 0..<blocks, using: &chain.generator) : cursor.next() % blocks
        let offset = block * UInt64(c.blockSize)
        guard let done = chain.done else { return }
        chain.started = cxen_monotonic_ns()
        if c.pattern.isRead {
            frontend.startRead(at: offset, into: chain.buffer, done: done)
        } else {
            frontend.startWrite(at: offset, from: UnsafeRawBufferPointer(chain.buffer), done: done)
        }
    }
}
