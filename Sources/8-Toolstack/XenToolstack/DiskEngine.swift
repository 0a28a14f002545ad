/// The storage engine a disk spec asks blkback to serve an image file with
/// (`engine=io_uring|libaio`; xenpv's extension to xl-disk-configuration(5)). Written to
/// the vbd's backend directory as `engine`; without it the backend chooses (io_uring
/// where the kernel allows it, libaio on tmpfs).
public enum DiskEngine: String, Hashable, Sendable, CaseIterable {
    /// Linux's io_uring.
    case ioUring = "io_uring"
    /// Linux's native AIO (libaio).
    case libaio

    /// Every spelling accepted, for error messages.
    static let spellings = allCases.map(\.rawValue).joined(separator: ", ")
}
