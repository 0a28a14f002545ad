import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory, made by `mkdtemp` (mode 0700, a name nobody else holds),
/// removed with everything in it by `remove()` or at deinit. By default under
/// /tmp, whose paths are short enough for Unix sockets.
public final class TemporaryDirectory: Sendable {
    public let path: String

    public init(prefix: String = "xenpv", in parent: String = "/tmp") throws {
        var template = Array("\(parent)/\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        path = String(cString: made)
    }

    /// The path of `name` inside the directory.
    public func path(_ name: String) -> String { path + "/" + name }

    /// Removes the directory and everything in it now (it is gone already after a first call).
    public func remove() { try? FileManager.default.removeItem(atPath: path) }

    deinit { remove() }
}

/// A disk image: a file of `bytes` bytes (sparse, or every byte `fill`) in a
/// temporary directory of its own under $TMPDIR (where O_DIRECT may work, unlike
/// on a tmpfs /tmp), removed at deinit.
public final class TemporaryImage: Sendable {
    public let directory: TemporaryDirectory
    public let path: String

    public init(bytes: Int, fill: UInt8? = nil, prefix: String = "xenpv-image") throws {
        let tmp = NSTemporaryDirectory()
        directory = try TemporaryDirectory(prefix: prefix, in: tmp.hasSuffix("/") ? String(tmp.dropLast()) : tmp)
        path = directory.path("disk.img")
        let fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0o600)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        if let fill {
            let chunk = [UInt8](repeating: fill, count: bytes)
            var done = 0
            while done < bytes {
                let n = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes - done, off_t(done)) }
                guard n > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
                done += n
            }
        } else {
            guard ftruncate(fd, off_t(bytes)) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }
    }

    /// The file's bytes now.
    public func contents() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
