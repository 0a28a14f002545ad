import Foundation
import Testing
import XenLocks

/// `onOwnThread` and `onOwnExecutor`: blocking work off the cooperative pool, its result
/// or error handed back.
@Suite(.timeLimit(.minutes(2)))
struct OwnThreadTests {
    struct Refused: Error, Equatable {}

    @Test func theResultOrErrorReachesTheTaskFromANamedThread() async throws {
        let name = await onOwnThread(named: "own-thread-test") {
            (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(name == "own-thread-test")
        #expect(await onOwnThread(named: "t") { 6 * 7 } == 42)
        await #expect(throws: Refused.self) { try await onOwnThread(named: "t") { () throws -> Int in throw Refused() } }
    }

    /// Sixteen calls that each block until all sixteen are blocked: on the cooperative
    /// pool (a thread per core) they could never all be waiting at once.
    @Test func moreBlockedCallsThanCoresAllGoOn() async {
        #expect(await Self.allMeet { wait in await onOwnThread(named: "barrier", wait) })
    }

    /// `count` tasks, each running `run` with a blocking wait for all of them to be
    /// waiting; whether every one met the others (bounded: a stalled pool gives up after
    /// 30 s instead of hanging the test).
    private static func allMeet(count: Int = 16, _ run: @escaping @Sendable (@escaping @Sendable () -> Bool) async -> Bool) async -> Bool {
        let arrived = Locked(0)
        let all = DispatchSemaphore(value: 0)
        let wait: @Sendable () -> Bool = {
            if arrived.withLock({ $0 += 1; return $0 }) == count {
                for _ in 0..<count { all.signal() }
            }
            return all.wait(timeout: .now() + 30) == .success
        }
        return await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<count { group.addTask { await run(wait) } }
            var met = 0
            for await ok in group where ok { met += 1 }
            return met == count
        }
    }

    /// The thread a task runs on now, as the kernel names it.
    private static func threadName() -> String? {
        (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aTaskOnItsOwnExecutorStaysOnItsThreadAcrossAwaitsAndChildTasks() async throws {
        let names = try await onOwnExecutor(named: "own-executor") { () async throws -> [String?] in
            let before = Self.threadName()
            try await Task.sleep(for: .milliseconds(1))
            let afterSleep = Self.threadName()
            await Task.yield()
            async let child = Self.threadName()
            return [before, afterSleep, Self.threadName(), await child]
        }
        #expect(names == Array(repeating: "own-executor", count: 4))
        await #expect(throws: Refused.self) { try await onOwnExecutor(named: "t") { () async throws -> Int in throw Refused() } }
    }

    /// Sixteen tasks, each on an executor of its own, that block until all sixteen are
    /// blocked: on the cooperative pool they could never all be waiting at once.
    @Test func moreBlockedTasksOnTheirOwnExecutorsThanCoresAllGoOn() async {
        #expect(await Self.allMeet { wait in
            (try? await onOwnExecutor(named: "barrier") { () async throws -> Bool in
                await Task.yield()
                return wait()
            }) ?? false
        })
    }
}
