import CUringStorage
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// What only the io_uring engine has: the submission funnel, SQ polling, the probe.
/// (Everything both file engines share is in FileEngineTests.)
@Suite(.timeLimit(.minutes(5)))
struct UringStorageTests {
    @Test func thisKernelAllowsIoUring() {
        // The machines this runs on have io_uring (kernel.io_uring_disabled = 0).
        #expect(UringStorage.unavailability == nil)
        #expect(FileEngineKind.preferred.kind == .ioUring && FileEngineKind.preferred.note == nil)
    }

    /// io_uring by default, libaio for a file on tmpfs (where io_uring punts every read to a worker).
    @Test func theDefaultEngineForAFile() throws {
        let image = try TemporaryImage(bytes: 64 * 1024)
        try #require(!FileEngineKind.isOnTmpfs(image.filePath), "TMPDIR is on tmpfs here")
        #expect(FileEngineKind.preferred(for: image.filePath).kind == .ioUring)
        let dir = try TemporaryDirectory(prefix: "xenpv-tmpfs", in: "/dev/shm")
        #expect(FileEngineKind.isOnTmpfs(FilePath(dir.path)))
        #expect(FileManager.default.createFile(atPath: dir.path("disk.img"), contents: Data(count: 4096)))
        let onTmpfs = FileEngineKind.preferred(for: FilePath(dir.path("disk.img")))
        #expect(onTmpfs.kind == .libaio && onTmpfs.note?.contains("tmpfs") == true)
    }

    func batch(_ b: Buffers) -> [StorageOperation] {
        (0..<6).map { i in
            let iov = b.vector(first: i, at: i * 4096, pieces: [4096])
            return i % 3 == 1 ? .write(tag: UInt64(i), offset: UInt64(i * 4096), buffers: iov)
                              : .read(tag: UInt64(i), offset: UInt64(i * 4096), buffers: iov)
        }
    }

    /// A batch is handed to the kernel in one `io_uring_submit`; a submission the kernel
    /// refuses for a while (EAGAIN, EBUSY) is retried by the next reap, and nothing is lost.
    @Test func oneSubmitPerBatchAndRefusedSubmitsAreRetried() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20, fill: 0x42)
            let s = try UringStorage(path: image.filePath, queueDepth: 8)
            defer { s.close() }
            var calls = 0
            s.ringSubmit = { ring in
                calls += 1
                return calls <= 2 ? -EAGAIN : (calls == 3 ? -EBUSY : cus_submit(ring))
            }
            let b = Buffers(byteCount: 6 * 4096)
            var d = Driver(s)
            let r = try d.run(batch(b))
            #expect(r.count == 6 && r.values.allSatisfy(\.succeeded))
            #expect(b.bytes[0..<4096].allSatisfy { $0 == 0x42 })

            calls = 10
            let r2 = try d.run(batch(b))
            #expect(r2.count == 6 && r2.values.allSatisfy(\.succeeded))
            #expect(calls == 11, "\(calls - 10) io_uring_submit calls for one batch of 6")
        }
    }

    /// With a kernel thread polling the submission ring the engine behaves the same.
    @Test func sqPollingConforms() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 8 << 20)
            let s = try UringStorage(path: image.filePath, queueDepth: 32, sqPollIdle: .milliseconds(10))
            defer { s.close() }
            #expect(s.sqPolling && !s.defersOffThreadCompletions)
            try Conformance.randomIO(s, seed: 31, rounds: 4)
            try Conformance.refusals(s)
        }
    }

    /// Completions that interrupts and io-wq workers make do not interrupt the queue thread
    /// (an inter-processor interrupt each, a trap to the hypervisor in a VM): they wait
    /// for its next system call, which a reap makes when the ring says work waits. On tmpfs
    /// every read goes through a worker; the engine answers every one, polled or slept for.
    @Test func completionsMadeByWorkersWaitForTheThreadAndAreReaped() async throws {
        // It spins on the ring and reaps with a timeout: on a thread of its own.
        try await onThread {
            let dir = try TemporaryDirectory(prefix: "xenpv-uring", in: "/dev/shm")
            let path = dir.path("disk.img")
            #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 0x37, count: 1 << 20)))
            let s = try UringStorage(path: FilePath(path), queueDepth: 32)
            defer { s.close() }
            #expect(s.defersOffThreadCompletions)
            let b = Buffers(byteCount: 4096)
            for round in 0..<64 {
                let op = StorageOperation.read(tag: UInt64(round), offset: UInt64(round % 256 * 4096), buffers: b.vector(first: 0, at: 0, pieces: [4096]))
                #expect(try [op].withUnsafeBufferPointer { try s.submit($0) } == 1)
                var completions = [StorageCompletion](repeating: .empty, count: 1)
                if round % 2 == 0 {
                    // A thread that polls: no system call until the ring says something waits
                    // (briefly; the reap below sleeps for the rest).
                    let deadline = ContinuousClock.now + .milliseconds(50)
                    while !s.mayHaveCompletions && ContinuousClock.now < deadline {}
                }
                let got = try completions.withUnsafeMutableBufferPointer { try s.reap(into: $0, timeout: .seconds(minimumDeadline)) }
                #expect(got == 1 && completions[0].tag == UInt64(round) && completions[0].succeeded)
            }
            #expect(b.bytes.allSatisfy { $0 == 0x37 })
        }
    }

    /// Opened buffered, a write is done in `submit` (a copy into the page cache, where
    /// io_uring would wake a worker thread for each of ext4's) and a read still goes through
    /// the ring; opened `O_DIRECT`, writes go through the ring too. A write in two pieces
    /// lands whole.
    @Test func bufferedWritesAreDoneInSubmitAndReadsInTheRing() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            for directIO in [StorageDirectIO.never, .required] {
                let image = try TemporaryImage(bytes: 1 << 20, fill: 0x11)
                let s = try UringStorage(path: image.filePath, directIO: directIO, queueDepth: 8)
                defer { s.close() }
                #expect(s.ioMode == (directIO == .never ? .buffered : .direct))
                var calls = 0
                s.ringSubmit = { ring in
                    calls += 1
                    return cus_submit(ring)
                }
                let b = Buffers(byteCount: 3 * 4096)
                for i in 0..<8192 { b.bytes[i] = UInt8(truncatingIfNeeded: i % 251) }
                var d = Driver(s)
                let written = try d.run([
                    .write(tag: 1, offset: 0, buffers: b.vector(first: 0, at: 0, pieces: [4096])),
                    .write(tag: 2, offset: 65536, buffers: b.vector(first: 1, at: 0, pieces: [3584, 4608])),
                ])
                #expect(written[1]?.succeeded == true && written[2]?.succeeded == true)
                #expect(calls == (directIO == .never ? 0 : 1), "\(directIO): \(calls) io_uring_submit calls for two writes")
                let read = try d.run([.read(tag: 3, offset: 65536, buffers: b.vector(first: 2, at: 8192, pieces: [4096]))])
                #expect(read[3]?.succeeded == true)
                #expect(calls == (directIO == .never ? 1 : 2), "\(directIO): the read went through the ring")
                #expect((0..<4096).allSatisfy { b.bytes[8192 + $0] == b.bytes[$0] })
                let file = try image.contents()
                #expect((0..<4096).allSatisfy { file[$0] == b.bytes[$0] })
                #expect((0..<8192).allSatisfy { file[65536 + $0] == b.bytes[$0] })
                #expect(file[4096] == 0x11 && file[65536 + 8192] == 0x11)
            }
        }
    }

    /// A read or write whose buffer lies inside memory given to `registerBuffer` goes as a
    /// fixed-buffer operation (the kernel pinned the memory once); one that leaves it, or
    /// after `unregisterBuffer`, goes as before. The data is right either way.
    @Test func registeredBuffersGoAsFixedOperations() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20, fill: 0x11)
            let s = try UringStorage(path: image.filePath, directIO: .required, queueDepth: 8)
            defer { s.close() }
            let b = Buffers(byteCount: 8 * 4096)
            for i in 0..<4096 { b.bytes[i] = UInt8(truncatingIfNeeded: i % 253) }
            let region = try #require(s.registerBuffer(UnsafeMutableRawBufferPointer(rebasing: b.bytes[0..<(4 * 4096)])))
            #expect(s.registerBuffer(UnsafeMutableRawBufferPointer(rebasing: b.bytes[4096..<(6 * 4096)])) == nil,
                    "memory overlapping a registered region")
            var d = Driver(s)
            let r = try d.run([
                .write(tag: 1, offset: 8192, buffers: b.vector(first: 0, at: 0, pieces: [4096])),  // inside
            ])
            #expect(r[1]?.succeeded == true && s.fixedBufferOperations == 1)
            let reads = try d.run([
                .read(tag: 2, offset: 8192, buffers: b.vector(first: 1, at: 4096, pieces: [4096])),  // inside
                .read(tag: 3, offset: 8192, buffers: b.vector(first: 2, at: 3 * 4096, pieces: [8192])),  // leaves it
                .read(tag: 4, offset: 8192, buffers: b.vector(first: 3, at: 6 * 4096, pieces: [4096])),  // outside
            ])
            #expect(reads.values.allSatisfy(\.succeeded) && reads.count == 3)
            #expect(s.fixedBufferOperations == 2)
            for page in [1, 3, 6] { #expect((0..<4096).allSatisfy { b.bytes[page * 4096 + $0] == b.bytes[$0] }, "page \(page)") }
            #expect(try image.contents()[8192..<12288].elementsEqual(b.bytes[0..<4096]))

            s.unregisterBuffer(region)
            let after = try d.run([.read(tag: 5, offset: 0, buffers: b.vector(first: 4, at: 4096, pieces: [4096]))])
            #expect(after[5]?.succeeded == true && s.fixedBufferOperations == 2, "no fixed operation after unregistering")
            #expect((0..<4096).allSatisfy { b.bytes[4096 + $0] == 0x11 })
            // The memory may be registered again, and a closed engine registers nothing.
            #expect(s.registerBuffer(UnsafeMutableRawBufferPointer(rebasing: b.bytes[0..<4096])) != nil)
            s.close()
            #expect(s.registerBuffer(UnsafeMutableRawBufferPointer(rebasing: b.bytes[4096..<8192])) == nil)
        }
    }

    /// A discard of nothing succeeds without reaching the kernel (as on libaio).
    @Test func anEmptyDiscardSucceeds() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 1 << 20)
            let s = try UringStorage(path: image.filePath, queueDepth: 4)
            defer { s.close() }
            var d = Driver(s)
            let r = try d.run([.discard(tag: 1, offset: 4096, length: 0)])
            #expect(r[1]?.succeeded == true)
        }
    }
}
