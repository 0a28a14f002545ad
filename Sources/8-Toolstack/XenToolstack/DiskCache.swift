/// Whether blkback serves an image through the host's page cache (`cache=none|writeback`,
/// QEMU's names for the two modes; xenpv's extension to xl-disk-configuration(5)). Written to
/// the vbd's backend directory as `cache`; without it the backend uses `none`.
///
/// Either way the guest sees a disk with a volatile write cache (`feature-flush-cache`): a
/// write is durable once a later flush completes, and the backend's flush is `fdatasync`.
/// With `writeback` a write completes when it is in the host's page cache, so it survives
/// the backend process (killed or restarted) but not the host; small writes then cost what
/// a memory copy costs instead of what the device takes. The backend flushes the image when
/// it closes the disk, as QEMU does, so a backend on another host that shares the image
/// (a migrated guest's) finds every write there.
public enum DiskCache: String, Hashable, Sendable, CaseIterable {
    /// `cache=none`: `O_DIRECT` where the file system allows it, every read and write goes to
    /// the device. (Not named `none`, which `Optional` already has.)
    case direct = "none"
    /// Through the host's page cache.
    case writeback

    /// Every spelling accepted, for error messages.
    public static let spellings = allCases.map(\.rawValue).joined(separator: ", ")
}
