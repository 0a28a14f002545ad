import Foundation
import Glibc
import Logging
import SystemPackage
import TestSupport
import Testing
import XenABI
import XenBlockExport
import XenBlockFront
import XenBlockFUSE
import XenBus
import XenEmbeddedHost
import XenHypervisor
import XenSimulator
import XenNetBack
import XenStore

/// What a finished program printed and how it ended.
struct ToolRun: CustomStringConvertible {
    let status: Int32
    let output: String
    var description: String { "exit \(status): \(output)" }
}

/// Where a tool is: `/usr/bin`, `/usr/sbin`, `/bin` or `/sbin`.
func toolPath(_ tool: String) -> String? {
    ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"].map { $0 + tool }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// Runs a program and waits for it by looking every 20 ms (never blocking a pool thread);
/// killed if it runs past `seconds`. It is started from a thread of its own: between fork
/// and exec the child closes the descriptors it inherited, and closing one of a FUSE file
/// this process serves waits for this process's answer (a flush), which a device may
/// compute on the pool; a pool thread blocked in `Process.run` could starve it.
func runTool(_ tool: String, _ arguments: [String], seconds: Double = 180) async throws -> ToolRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: toolPath(tool) ?? "/usr/bin/" + tool)
    process.arguments = arguments
    let log = FileManager.default.temporaryDirectory.appendingPathComponent("fuse-tool-\(UUID().uuidString).log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: log) }
    let handle = try FileHandle(forWritingTo: log)
    process.standardOutput = handle
    process.standardError = handle
    process.standardInput = FileHandle.nullDevice
    try await onThread { try process.run() }
    try? handle.close()
    let finished = await eventually(seconds, every: .milliseconds(20)) { !process.isRunning }
    if !finished {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    guard finished else { throw TimedOut(seconds: seconds) }
    return ToolRun(status: process.terminationStatus, output: output)
}

/// A shell script's run (`sh -c`).
func shell(_ script: String, seconds: Double = 180) async throws -> ToolRun {
    try await runTool("sh", ["-c", script], seconds: seconds)
}

/// Runs `body` on a new thread and returns its result: file system calls on a FUSE file
/// block, and must not block a cooperative-pool thread (a memory device's tasks run there).
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Runs `body`, then `cleanup` whether or not `body` threw (an `async` `defer`).
func withCleanup<T>(_ body: () async throws -> T, cleanup: () async -> Void) async throws -> T {
    do {
        let value = try await body()
        await cleanup()
        return value
    } catch {
        await cleanup()
        throw error
    }
}

/// Whether `directory` is a mount point now (by /proc/self/mountinfo).
func isMountPoint(_ directory: String) -> Bool {
    let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").contains { line in
        let fields = line.split(separator: " ")
        return fields.count > 4 && fields[4] == directory
    }
}

/// Whether FUSE works here (`/dev/fuse` and root).
let fuseAvailable = FileManager.default.fileExists(atPath: "/dev/fuse") && getuid() == 0

/// Mounts `device` in a new directory, runs `body` with the file, then unmounts and
/// checks the mount went away.
func withMountedFile<T>(_ device: any BlockExportDevice, name: String = "xvda",
                        _ body: (BlockDeviceFile, TemporaryDirectory) async throws -> T) async throws -> T {
    let directory = try TemporaryDirectory(prefix: "xenpv-fuse")
    let mountpoint = directory.path("mnt")
    try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: false)
    let file = try await BlockDeviceFile.mount(device, at: mountpoint, name: name)
    return try await withCleanup({ try await body(file, directory) }, cleanup: {
        file.unmount()
        let gone = await file.unmounted(timeout: .seconds(120))
        #expect(gone, "the FUSE mount ended")
        #expect(!isMountPoint(mountpoint))
    })
}

/// A guest's vbd on a real image file through an embedded host (simulated hypervisor,
/// xenstored, blkback on libaio), connected, with its `BlockFrontend`.
final class PVDisk: @unchecked Sendable {
    // @unchecked: set up once, then only read; `close()` is called once.
    let directory: TemporaryDirectory
    let image: String
    let host: EmbeddedHost
    let frontend: BlockFrontend
    private let endpoint: XenbusEndpoint
    private let task: Task<Void, Error>
    private let vbd: XenbusDevice
    private let sharer: any GrantSharer

    static func make(bytes: Int, readOnly: Bool = false) async throws -> PVDisk {
        let dir = try TemporaryDirectory(prefix: "xenpv-fuse-disk")
        let image = dir.path("disk.img")
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(bytes)) == 0 else {
            throw TimedOut(seconds: 0)
        }
        var logger = Logger(label: "fuse-test")
        logger.logLevel = .warning
        let host = try EmbeddedHost(directory: URL(fileURLWithPath: dir.path), logger: logger) { _, _ in EchoAttachment.make() }
        try await host.startBlockBackend()
        let guest = try await host.createGuest(frames: 4096)
        let guestStore = try host.store(for: guest.domainID)
        let vbd = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        try await XenbusToolstack.create(vbd, on: host.store,
                                         backendKeys: ["params": image, "mode": readOnly ? "r" : "w", "type": "file"])
        let sharer = try guest.openGrantSharer()
        let driver = BlockFrontendDriver(device: vbd, store: guestStore, hypervisor: guest, sharer: sharer)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vbd.frontendPath, peerPath: vbd.backendPath,
                                      driver: driver, logger: logger)
        let task = Task { try await endpoint.run() }
        try await endpoint.connected(timeout: .seconds(120))
        return PVDisk(directory: dir, image: image, host: host, frontend: driver.frontend, endpoint: endpoint, task: task,
                      vbd: vbd, sharer: sharer)
    }

    private init(directory: TemporaryDirectory, image: String, host: EmbeddedHost, frontend: BlockFrontend,
                 endpoint: XenbusEndpoint, task: Task<Void, Error>, vbd: XenbusDevice, sharer: any GrantSharer) {
        self.directory = directory
        self.image = image
        self.host = host
        self.frontend = frontend
        self.endpoint = endpoint
        self.task = task
        self.vbd = vbd
        self.sharer = sharer
    }

    /// Unplugs the vbd and stops the host; the hypervisor's leftovers.
    func close() async throws -> Leftovers {
        endpoint.requestClose()
        try await task.value
        try await XenbusToolstack.remove(vbd, on: host.store)
        sharer.close()
        let leftovers = await host.shutdown()
        directory.remove()
        return leftovers
    }
}

/// The file's bytes at `offset` (pread on the calling thread).
func readBytes(_ path: String, at offset: Int64, count: Int) throws -> [UInt8] {
    let fd = try FileDescriptor.open(path, .readOnly, options: .closeOnExec)
    defer { try? fd.close() }
    var out = [UInt8](repeating: 0, count: count)
    let n = try out.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: offset, into: $0) }
    return Array(out.prefix(n))
}

/// Writes `bytes` at `offset` (pwrite on the calling thread); the count written.
@discardableResult
func writeBytes(_ path: String, _ bytes: [UInt8], at offset: Int64) throws -> Int {
    let fd = try FileDescriptor.open(path, .writeOnly, options: .closeOnExec)
    defer { try? fd.close() }
    return try bytes.withUnsafeBytes { try fd.write(toAbsoluteOffset: offset, $0) }
}

/// A file's size and mode (`stat` on the calling thread).
func fileStatus(_ path: String) throws -> (size: Int, mode: mode_t) {
    var st = stat()
    guard stat(path, &st) == 0 else { throw Errno(rawValue: errno) }
    return (Int(st.st_size), st.st_mode)
}
