#if canImport(Glibc)
import Glibc
#endif

/// A /proc file read to its end with `read(2)`, or nil if it cannot be opened.
/// Foundation's whole-file readers trust `st_size`, which is 0 here, and return the
/// first 4 KiB only: a mount table longer than that loses its later lines.
public func procFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Whether `directory` is a mount point now, by /proc/self/mountinfo (field 5).
public func isMountPoint(_ directory: String) -> Bool {
    guard let table = procFile("/proc/self/mountinfo") else { return false }
    return table.split(separator: "\n").contains { line in
        line.split(separator: " ").dropFirst(4).first.map(String.init) == directory
    }
}
