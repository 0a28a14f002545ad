import Glibc

/// Seals on a memfd shared between processes (`fcntl(2)`, F_ADD_SEALS).
///
/// Whoever holds a memfd's descriptor may `ftruncate` it, and every other
/// process that maps the file then faults (SIGBUS) on its next access past
/// the new end. A file handed to an untrusted process is therefore sealed at
/// its size before it leaves the daemon: created with `MFD_ALLOW_SEALING`,
/// sized, then sealed against shrinking, growing and further sealing.
enum MemfdSeals {
    // From <linux/fcntl.h>; Glibc's module does not export them.
    static let addSeals: Int32 = 1033
    static let seal: Int32 = 0x0001
    static let shrink: Int32 = 0x0002
    static let grow: Int32 = 0x0004

    /// Seals `fd` at its current size; false (errno set) if the kernel refused.
    static func fixSize(_ fd: Int32) -> Bool {
        fcntl(fd, addSeals, shrink | grow | seal) == 0
    }
}
