import CBlockStorage
import CXen
import Glibc
import SystemPackage

/// Whether a file engine opens its image with `O_DIRECT`.
public enum StorageDirectIO: Sendable {
    /// `O_DIRECT`, or buffered if the file system refuses it with `EINVAL` (tmpfs before Linux 6.6).
    case preferred
    /// `O_DIRECT` or fail.
    case required
    /// Buffered I/O through the page cache.
    case never
}

/// How a file engine's image ended up open.
public enum StorageIOMode: Sendable {
    /// `O_DIRECT`: buffers, lengths and offsets must be aligned.
    case direct
    /// Through the page cache.
    case buffered
}

/// What the open funnel is asked for, so a test can make `O_DIRECT` fail as tmpfs once did.
struct StorageOpenRequest {
    var mode: FileDescriptor.AccessMode
    var options: FileDescriptor.OpenOptions
    var direct: Bool
}

/// An image file or block device opened for a file engine: the descriptor, how it is
/// open, its size and its `O_DIRECT` alignment. Both file engines open the same way, so
/// they agree on sizes, alignment and the `O_DIRECT` fallback.
struct StorageFile {
    let fd: FileDescriptor
    let ioMode: StorageIOMode
    let byteCount: UInt64
    let alignment: Int

    typealias Open = (FilePath, StorageOpenRequest) throws(Errno) -> FileDescriptor

    static func systemOpen(_ path: FilePath, _ request: StorageOpenRequest) throws(Errno) -> FileDescriptor {
        do {
            return try FileDescriptor.open(path, request.mode, options: request.options)
        } catch let e as Errno {
            throw e
        } catch {
            throw Errno.ioError  // FileDescriptor.open throws only Errno
        }
    }

    /// Opens `path`; the caller owns (and closes) ``fd``.
    init(path: FilePath, readOnly: Bool, directIO: StorageDirectIO, open: Open) throws(StorageError) {
        let mode: FileDescriptor.AccessMode = readOnly ? .readOnly : .readWrite
        let direct = FileDescriptor.OpenOptions(rawValue: cxen_o_direct())
        var opened: FileDescriptor
        var ioMode = StorageIOMode.buffered
        do throws(Errno) {
            if directIO == .never {
                opened = try open(path, StorageOpenRequest(mode: mode, options: [.closeOnExec], direct: false))
            } else {
                do throws(Errno) {
                    opened = try open(path, StorageOpenRequest(mode: mode, options: [.closeOnExec, direct], direct: true))
                    ioMode = .direct
                } catch .invalidArgument where directIO == .preferred {
                    opened = try open(path, StorageOpenRequest(mode: mode, options: [.closeOnExec], direct: false))
                }
            }
        } catch {
            throw StorageError(.io(error), "open \(path)\(directIO == .required ? " with O_DIRECT" : "")")
        }
        do throws(StorageError) {
            var st = stat()
            guard fstat(opened.rawValue, &st) == 0 else {
                throw StorageError(.io(Errno(rawValue: errno)), "fstat \(path)")
            }
            let isBlockDevice = st.st_mode & S_IFMT == S_IFBLK
            var size: UInt64 = 0
            if isBlockDevice {
                let e = cbs_block_device_bytes(opened.rawValue, &size)
                guard e == 0 else { throw StorageError(.io(Errno(rawValue: e)), "BLKGETSIZE64 \(path)") }
            } else {
                size = UInt64(clamping: st.st_size)
            }
            byteCount = size
            alignment = ioMode == .direct ? Self.directAlignment(opened, isBlockDevice: isBlockDevice) : 1
        } catch {
            try? opened.close()
            throw error
        }
        fd = opened
        self.ioMode = ioMode
    }

    /// The `O_DIRECT` alignment: what the kernel reports for the file (`STATX_DIOALIGN`),
    /// the device's logical block size, or 512.
    private static func directAlignment(_ fd: FileDescriptor, isBlockDevice: Bool) -> Int {
        if isBlockDevice {
            var size: UInt32 = 0
            if cbs_block_device_logical_block_size(fd.rawValue, &size) == 0 && size > 0 { return Int(size) }
            return 512
        }
        var mem: UInt32 = 0, off: UInt32 = 0
        if cbs_dio_alignment(fd.rawValue, &mem, &off) == 0 { return Int(max(mem, off, 1)) }
        return 512
    }

    /// Closes an engine's image. One written through the page cache is `fdatasync`ed first, as
    /// QEMU flushes an image it closes: what blkback acknowledged then lies only in this host's
    /// page cache, where a backend on another host sharing the image (a migrated guest's) would
    /// not see it. (`O_DIRECT` writes are at the device already, whose cache any reader sees.)
    static func close(_ fd: FileDescriptor, ioMode: StorageIOMode, readOnly: Bool) {
        if ioMode == .buffered && !readOnly { _ = cbs_fdatasync(fd.rawValue) }
        try? fd.close()
    }
}
