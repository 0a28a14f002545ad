import CFuseFile
import Dispatch
import Foundation
import Glibc
import SystemPackage
import XenBlockExport
import XenLocks

/// A `BlockExportDevice` (of `XenBlockExport`) shown as one file, `DIRECTORY/NAME`, in a FUSE
/// mount (libfuse3's low-level API), so that any program — `losetup`, `dd`, `fio` — can
/// use a guest's disk.
///
/// The file is the disk's size, mode 0600 (0400 and a read-only mount on a read-only
/// disk). Every open is direct I/O: reads and writes go to the device as they come, with
/// no page cache. Reads and writes whose offset or length are not multiples of the
/// sector size work: a read is widened to whole sectors, a write becomes a
/// read-modify-write of its first and last sectors, serialised against every other write.
/// `fsync` flushes the device (`close` does not: see the C glue);
/// `fallocate(PUNCH_HOLE|KEEP_SIZE)` discards (whole
/// sectors; partial ones at its ends are written with zeros) where the device discards and
/// a discarded range reads back as zeros, else `EOPNOTSUPP`. Writes to a read-only disk get
/// `EROFS`, a write from the end on `ENOSPC`, a change of the size `EPERM`, and a device
/// error `EIO` (or what its `NBDErrnoConvertible` says).
///
/// libfuse's worker threads (a dedicated thread and those it starts) serve the requests:
/// aligned reads and writes are handed to the device and answered from its completion, so
/// a program's whole queue depth reaches the vbd; the rest the worker waits for. A request
/// the device has not finished within the timeout given at mount gets `EIO`.
/// The mount goes away on ``unmount()`` or on `umount DIRECTORY`.
public final class BlockDeviceFile: @unchecked Sendable {
    // @unchecked: `handle` is set before the thread starts; `state` is locked.
    /// The file's path.
    public let path: String
    /// The mount's directory.
    public let directory: String
    private let handle: OpaquePointer
    private let bridge: Unmanaged<DeviceBridge>
    private let state = Locked<(running: Bool, result: Int32)>((true, 0))
    private let ended = DispatchSemaphore(value: 0)
    private let finished = Locked(false)

    /// Mounts `device` as `directory/name` and serves it on a new thread, with `threads`
    /// libfuse workers. `directory` must exist (an empty directory). The mount is a
    /// blocking system call: from `async` code use ``mount(_:at:name:threads:timeout:)``.
    public init(_ device: any BlockExportDevice, at directory: String, name: String = "xvda", threads: Int = 4,
                timeout: Duration = .seconds(120)) throws(BlockFileError) {
        guard let geometry = device.exportGeometry else { throw BlockFileError(.badDevice, "the device has no geometry (not connected)") }
        let sector = geometry.sectorSize
        guard sector >= 512, sector <= 65536, sector & (sector - 1) == 0, geometry.size > 0, geometry.size % UInt64(sector) == 0 else {
            throw BlockFileError(.badDevice, "a disk of \(geometry.size) bytes in sectors of \(sector) cannot be a file")
        }
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), name.utf8.count <= 255 else {
            throw BlockFileError(.badName, "\(name.debugDescription) is not a file name")
        }
        let bridge = Unmanaged.passRetained(DeviceBridge(device: device, timeout: timeout))
        var ops = cfuse_device_ops()
        ops.context = bridge.toOpaque()
        ops.read = { context, offset, buffer, length in
            Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().read(at: offset, into: buffer!, count: length)
        }
        ops.write = { context, offset, buffer, length in
            Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().write(at: offset, from: buffer!, count: length)
        }
        ops.flush = { context in Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().flush() }
        ops.discard = { context, offset, length in
            Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().discard(at: offset, length: length)
        }
        ops.read_async = { context, request, offset, length in
            Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().readAsync(request!, at: offset, count: length)
        }
        ops.write_async = { context, request, offset, data, length in
            Unmanaged<DeviceBridge>.fromOpaque(context!).takeUnretainedValue().writeAsync(request!, at: offset, from: data!, count: length)
        }
        var error: Int32 = 0
        let mounted: OpaquePointer? = name.withCString { cName in
            var config = cfuse_file_config()
            config.name = cName
            config.size = geometry.size
            config.sector_size = sector
            config.read_only = geometry.readOnly ? 1 : 0
            config.can_flush = geometry.canFlush ? 1 : 0
            config.can_discard = geometry.canDiscard && geometry.discardZeroes ? 1 : 0
            config.max_threads = UInt32(clamping: max(threads, 1))
            return cfuse_file_mount(directory, &config, &ops, &error)
        }
        guard let mounted else {
            bridge.takeUnretainedValue().close()
            bridge.release()
            throw BlockFileError(.mount, "cannot mount a FUSE file system on \(directory)", underlying: Errno(rawValue: error))
        }
        handle = mounted
        self.bridge = bridge
        self.directory = directory
        path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
        startDetachedThread(named: "fuse \(name)") { [self] in serve() }
    }

    /// Mounts `device` as `directory/name` from a dedicated thread (the mount is a blocking
    /// system call) and returns once the file is there.
    public static func mount(_ device: any BlockExportDevice, at directory: String, name: String = "xvda", threads: Int = 4,
                             timeout: Duration = .seconds(120)) async throws -> BlockDeviceFile {
        try await withCheckedThrowingContinuation { continuation in
            startDetachedThread(named: "fuse-mount") {
                continuation.resume(with: Result { try BlockDeviceFile(device, at: directory, name: name, threads: threads, timeout: timeout) })
            }
        }
    }

    private func serve() {
        let result = cfuse_file_run(handle)
        // Marked ended under the lock `unmount()` stops under, so it never stops a freed session.
        state.withLock { $0 = (false, result) }
        cfuse_file_destroy(handle)
        bridge.takeUnretainedValue().close()
        bridge.release()
        finished.store(true)
        ended.signal()
    }

    /// Whether the mount is still served.
    public var isMounted: Bool { !finished.load() }

    /// Ends the mount: no new request is served and the directory is detached; the serving
    /// thread ends once no program holds the file open any more.
    public func unmount() {
        state.withLock { if $0.running { cfuse_file_stop(handle) } }
    }

    /// Waits (blocking the calling thread: not for `async` code) until the mount has
    /// gone; false if it has not within `timeout`.
    public func waitUntilUnmounted(timeout: Duration) -> Bool {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = max(0, seconds) * 1_000_000_000 + attoseconds / 1_000_000_000
        guard ended.wait(timeout: .now() + .nanoseconds(Int(clamping: nanoseconds))) == .success else { return false }
        ended.signal()
        return true
    }

    /// Waits, polling every 20 ms, until the mount has gone; false if it has not within `timeout`.
    public func unmounted(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while isMounted {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }
}

extension Locked where Value == Bool {
    fileprivate func load() -> Bool { withLock { $0 } }
    fileprivate func store(_ value: Bool) { withLock { $0 = value } }
}
