import Glibc
import NBDProtocol

/// A disk's target as a backend opens it: an absolute path to an existing regular
/// file or block device, with its size and the identity two attachments share; or an
/// NBD export's URI (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`),
/// checked for form only (its size is the server's, learnt when the backend connects).
///
/// The path comes from a config file or a backend directory's `params`: it is checked
/// here, never trusted to be well formed.
public struct DiskTarget: Hashable, Sendable {
    /// The path as given.
    public var path: String
    /// Whether it is a block device (else a regular file).
    public var isBlockDevice: Bool
    /// Its size in bytes (0 for an NBD export: the server says at connect).
    public var byteCount: UInt64
    /// The export, when the target is an NBD URI (then ``path`` is the URI as given).
    public var nbd: NBDURI?
    /// What makes two paths the same disk: the device number for a block device, the
    /// file system's device and inode for a file.
    public var identity: Identity

    /// Two paths name the same disk when their identities are equal.
    public enum Identity: Hashable, Sendable {
        /// A block device's `st_rdev`.
        case blockDevice(UInt64)
        /// A regular file's `st_dev` and `st_ino`.
        case file(device: UInt64, inode: UInt64)
        /// An NBD export, by its canonical URI.
        case nbd(String)
    }

    /// The longest path accepted (PATH_MAX).
    public static let maximumPathLength = 4096

    /// Checks `path` and reads its size.
    /// - Throws: ``ToolstackError`` `.badDisk` saying what is wrong.
    public init(checking path: String) throws(ToolstackError) {
        func bad(_ why: String) -> ToolstackError { ToolstackError(.badDisk, "disk target \(Self.shown(path)): \(why)") }
        if NBDURI.looksLikeURI(path) {
            do {
                let uri = try NBDURI(parsing: path)
                self.path = path
                isBlockDevice = false
                byteCount = 0
                nbd = uri
                identity = .nbd(uri.description)
                return
            } catch {
                throw bad(error.message)
            }
        }
        nbd = nil
        guard path.hasPrefix("/") else { throw bad("not an absolute path") }
        guard path.utf8.count <= Self.maximumPathLength, !path.utf8.contains(0) else { throw bad("not a usable path") }
        var st = stat()
        guard stat(path, &st) == 0 else { throw bad(String(cString: strerror(errno))) }
        let kind = st.st_mode & S_IFMT
        self.path = path
        switch kind {
        case S_IFREG:
            isBlockDevice = false
            byteCount = UInt64(clamping: st.st_size)
            identity = .file(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        case S_IFBLK:
            isBlockDevice = true
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw bad(String(cString: strerror(errno))) }
            let end = lseek(fd, 0, SEEK_END)
            close(fd)
            guard end >= 0 else { throw bad("its size cannot be read") }
            byteCount = UInt64(end)
            identity = .blockDevice(UInt64(st.st_rdev))
        default:
            throw bad("not a regular file or a block device")
        }
        guard byteCount >= 4096, byteCount % 512 == 0 else {
            throw bad("a disk needs a positive multiple of 512 bytes, at least 4096; this one has \(byteCount)")
        }
    }

    /// `path` quoted and cut for a message (it may come from a peer).
    static func shown(_ path: String) -> String {
        let cut = path.prefix(200)
        return (cut.count < path.count ? String(cut) + "…" : path).debugDescription
    }
}
