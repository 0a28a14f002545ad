import BlockViewTestSupport
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
import XenBlockExport
import XenBlockFUSE

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
