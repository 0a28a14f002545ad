import BlockViewTestSupport
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
import XenBlockExport
import XenBlockFUSE
import XenLocks

/// A memory disk whose reads can be held: `gate` opens once `opensAt` reads are waiting
/// at the same time (or never, for nil), and the most ever in flight is counted.
private final class HeldDevice: BlockExportDevice {
    let disk: MemoryBlockDevice
    let opensAt: Int?
    private let state = Locked((inFlight: 0, most: 0, open: false))
    private let released = Locked(false)

    init(size: UInt64, opensAt: Int?) {
        disk = MemoryBlockDevice(geometry: BlockExportGeometry(size: size))
        self.opensAt = opensAt
    }

    var exportGeometry: BlockExportGeometry? { disk.exportGeometry }
    var exportExecutor: (any TaskExecutor)? { nil }
    var most: Int { state.withLock { $0.most } }
    /// Lets every held read end (the end of a test).
    func release() { released.withLock { $0 = true } }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws {
        state.withLock { s in
            s.inFlight += 1
            s.most = max(s.most, s.inFlight)
            if let opensAt, s.inFlight >= opensAt { s.open = true }
        }
        // Waits (sleeping: never blocking a pool thread) for the gate, at most 60 s.
        for _ in 0..<6_000 where !state.withLock({ $0.open }) && !released.withLock({ $0 }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        state.withLock { $0.inFlight -= 1 }
        try await disk.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) async throws { try await disk.write(at: offset, from: buffer) }
    func flush() async throws {}
    func discard(at offset: UInt64, length: UInt64) async throws { try await disk.discard(at: offset, length: length) }
}

/// What the asynchronous read and write path promises: a program's queue depth reaches the
/// device (not one request per libfuse worker), and a request the device never finishes
/// gets `EIO` after the mount's timeout.
@Suite(.timeLimit(.minutes(10)), .enabled(if: fuseAvailable, "needs /dev/fuse and root"))
struct QueueDepthTests {
    /// fio keeps 32 reads in flight; the device holds every read until 16 wait at once. Were
    /// each of the 4 libfuse workers to wait for its own request, no more than 4 could ever
    /// be at the device, the gate would not open and every read would wait out its bound.
    @Test(.enabled(if: toolPath("fio") != nil, "needs fio"))
    func aProgramsQueueDepthReachesTheDevice() async throws {
        let device = HeldDevice(size: 16 << 20, opensAt: 16)
        defer { device.release() }
        try await withMountedFile(device) { file, _ in
            let run = try await runTool("fio", ["--name=qd", "--filename=\(file.path)", "--ioengine=libaio", "--direct=1",
                                                "--rw=randread", "--bs=4k", "--iodepth=32", "--io_size=4m", "--norandommap"],
                                        seconds: 300)
            #expect(run.status == 0, "\(run)")
        }
        #expect(device.most >= 16, "at most \(device.most) reads were at the device at once")
    }

    @Test func aRequestTheDeviceNeverFinishesGetsEIO() async throws {
        let device = HeldDevice(size: 1 << 20, opensAt: nil)
        defer { device.release() }
        let directory = try TemporaryDirectory(prefix: "xenpv-fuse")
        let file = try await BlockDeviceFile.mount(device, at: directory.path, timeout: .seconds(1))
        let error = await #expect(throws: Errno.self) { try await onThread { try readBytes(file.path, at: 0, count: 4096) } }
        #expect(error == .ioError)
        // The mount still serves: once the device answers, reads work. (On a loaded
        // machine a read may itself outlive the 1 s watchdog; a later one answers.)
        device.release()
        var zeros: [UInt8]?
        _ = await eventually(every: .milliseconds(100)) {
            zeros = try? await onThread { try readBytes(file.path, at: 4096, count: 4096) }
            return zeros != nil
        }
        #expect(zeros == [UInt8](repeating: 0, count: 4096))
        file.unmount()
        #expect(await file.unmounted(timeout: .seconds(120)))
    }
}
