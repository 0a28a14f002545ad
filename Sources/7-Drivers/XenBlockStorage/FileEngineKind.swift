import CBlockStorage
import SystemPackage

/// A storage engine over an image file or a block device: ``UringStorage`` or ``LibaioStorage``.
public protocol FileStorageEngine: StorageEngine {
    /// The image file or block device opened.
    var path: FilePath { get }
    /// Whether it ended up open with `O_DIRECT`.
    var ioMode: StorageIOMode { get }
}

extension LibaioStorage: FileStorageEngine {}
extension UringStorage: FileStorageEngine {}

/// Which engine serves a disk image: chosen per disk (`--engine io_uring|libaio`),
/// io_uring by default where the kernel allows it.
public enum FileEngineKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// ``UringStorage``.
    case ioUring = "io_uring"
    /// ``LibaioStorage``.
    case libaio

    /// The name on the command line.
    public var description: String { rawValue }

    /// io_uring, unless the kernel refuses it (asked once, ``UringStorage/unavailability``);
    /// then libaio, with a line saying why for the log.
    public static var preferred: (kind: FileEngineKind, note: String?) {
        guard let why = UringStorage.unavailability else { return (.ioUring, nil) }
        return (.libaio, "io_uring is not available (\(why)); serving disks with libaio")
    }

    /// ``preferred``, and libaio for a file on tmpfs: tmpfs cannot read without blocking,
    /// so io_uring hands every read there to a kernel worker thread (an extra thread and
    /// wake-up per read: less than half of libaio's IOPS at queue depth 1, the README's
    /// block section has the measurement).
    public static func preferred(for path: FilePath) -> (kind: FileEngineKind, note: String?) {
        let host = preferred
        guard host.kind == .ioUring, isOnTmpfs(path) else { return host }
        return (.libaio, "\(path) is on tmpfs, where io_uring hands every read to a kernel thread; serving it with libaio")
    }

    /// `statfs` says tmpfs (`TMPFS_MAGIC`); false when it cannot tell.
    static func isOnTmpfs(_ path: FilePath) -> Bool {
        path.withPlatformString { cbs_is_on_tmpfs($0) } == 1
    }

    /// Opens `path` with this engine. `sqPollIdle`: io_uring's submission-queue polling
    /// thread, idle after that long (see ``UringStorage/init(path:readOnly:directIO:queueDepth:sqPollIdle:)``); libaio ignores it.
    public func open(_ path: FilePath, readOnly: Bool = false, directIO: StorageDirectIO = .preferred,
                     queueDepth: Int = 64, sqPollIdle: Duration? = nil) throws(StorageError) -> any FileStorageEngine {
        switch self {
        case .ioUring: try UringStorage(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth,
                                        sqPollIdle: sqPollIdle)
        case .libaio: try LibaioStorage(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth)
        }
    }
}
