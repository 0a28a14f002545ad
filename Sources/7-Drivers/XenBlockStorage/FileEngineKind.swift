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
