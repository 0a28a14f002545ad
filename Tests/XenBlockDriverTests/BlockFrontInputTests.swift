import Foundation
import Glibc
import TestSupport
import Testing
import XenBlockFront
import XenLocks

/// `serveInput`: the device's first queue thread takes a descriptor's input itself, as
/// the NBD export has it take a client's requests.
@Suite(.timeLimit(.minutes(5)))
struct BlockFrontInputTests {
    /// An input that takes every byte its socket holds (never waiting) and notes the
    /// threads that called it.
    final class SocketInput: BlockFrontInput, Sendable {
        let fd: Int32
        let taken = Locked<[UInt8]>([])
        let threads = Locked<Set<String>>([])
        let calls = Locked(0)
        let handedBack = Locked(false)

        init(fd: Int32) { self.fd = fd }

        func takeInput() {
            calls.withLock { $0 += 1 }
            let name = currentThreadName()
            threads.withLock { _ = $0.insert(name) }
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard n > 0 else { return }
                taken.withLock { $0 += buffer[0..<n] }
            }
        }

        func inputHandedBack() { handedBack.withLock { $0 = true } }
    }

    private func socketPair() -> (client: Int32, server: Int32) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// A connected device serving one end of a socket pair as an input; `body` gets the
    /// fixture, the other end (the client's) and the input.
    private func withServedInput(_ body: (BlockFixture, Int32, SocketInput) async throws -> Void) async throws {
        let f = try BlockFixture.inMemory(bytes: 1 << 20)
        try f.start()
        let (client, server) = socketPair()
        defer {
            close(client)
            close(server)
        }
        let input = SocketInput(fd: server)
        #expect(f.frontend.serveInput(input, descriptor: server))
        try await body(f, client, input)
    }

    /// A write through the device: its request goes out in a turn of the queue thread,
    /// which lets every ready input take its input first.
    private func aTurn(_ f: BlockFixture) async throws {
        try await withTimeout(60) { try await f.frontend.write(at: 0, [UInt8](repeating: 7, count: 512)) }
    }

    /// The queue thread takes what the socket holds; paused, it leaves it there through its
    /// turns; resumed, it takes it; removed, it is never called again.
    @Test func theQueueThreadTakesTheInputUntilPausedOrRemoved() async throws {
        try await withServedInput { f, client, input in
            let server = input.fd
            send(client, [1, 2, 3])
            #expect(await eventually { input.taken.withLock { $0 } == [1, 2, 3] })
            #expect(input.threads.withLock { $0.allSatisfy { $0.hasPrefix("blkfront") } }, "\(input.threads.withLock { $0 })")

            f.frontend.pauseInput(descriptor: server)
            send(client, [4])
            try await aTurn(f)
            #expect(input.taken.withLock { $0 } == [1, 2, 3])
            f.frontend.resumeInput(descriptor: server)
            #expect(await eventually { input.taken.withLock { $0 } == [1, 2, 3, 4] })

            f.frontend.removeInput(descriptor: server)
            let calls = input.calls.withLock { $0 }
            send(client, [5])
            try await aTurn(f)
            #expect(input.calls.withLock { $0 } == calls)
            #expect(try f.teardown().isEmpty)
            #expect(!input.handedBack.withLock { $0 })
        }
    }

    /// Between two connections the input waits (no thread takes it); the next connection's
    /// queue thread takes it; when the device closes for good the input is handed back,
    /// and a closed device takes no new one.
    @Test func anInputWaitsBetweenConnectionsAndIsHandedBackWhenTheDeviceCloses() async throws {
        try await withServedInput { f, client, input in
            try f.stopBackend()
            await f.frontend.detached()
            for r in f.resources { #expect(r.release(sharer: f.sharer)) }
            f.resources = []
            send(client, [9, 8])
            try f.shareAndMap()
            try f.startBackend()
            try f.frontend.attach(f.resources, info: f.info)
            #expect(await eventually { input.taken.withLock { $0 } == [9, 8] })
            #expect(try f.teardown().isEmpty)
            #expect(input.handedBack.withLock { $0 })
            let (c2, s2) = socketPair()
            defer {
                close(c2)
                close(s2)
            }
            #expect(!f.frontend.serveInput(SocketInput(fd: s2), descriptor: s2))
        }
    }
}
