import Foundation
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

/// The kernel's names of a process's threads (`/proc/PID/task/*/comm`: what `ps -L`, `top -H`
/// and `perf` show), `pid` "self" for this process; a thread that ends meanwhile is left out.
public func threadNames(of pid: String = "self") -> [String] {
    numberedEntries(of: "/proc/\(pid)/task").compactMap { task in
        procFile("/proc/\(pid)/task/\(task)/comm").map { String($0.prefix { $0 != "\n" }) }
    }
}

/// The entries of a /proc directory named by a number (tasks, descriptors), or none if it
/// cannot be opened.
func numberedEntries(of directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.first?.isNumber == true }
}

/// Whether `directory` is a mount point now, by /proc/self/mountinfo (field 5).
public func isMountPoint(_ directory: String) -> Bool {
    guard let table = procFile("/proc/self/mountinfo") else { return false }
    return table.split(separator: "\n").contains { line in
        line.split(separator: " ").dropFirst(4).first.map(String.init) == directory
    }
}

/// The open(2) flags (`/proc/PID/fdinfo/N`'s `flags`, octal there) of each of a process's
/// descriptors open on `path`; a descriptor closed meanwhile is left out.
public func openFlags(of pid: Int32, path: String) -> [Int32] {
    var target = [CChar](repeating: 0, count: 4096)
    return numberedEntries(of: "/proc/\(pid)/fd").compactMap { fd in
        let n = readlink("/proc/\(pid)/fd/\(fd)", &target, target.count - 1)
        guard n > 0, String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == path,
            let info = procFile("/proc/\(pid)/fdinfo/\(fd)"),
            let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags:") })
        else { return nil }
        return Int32(line.dropFirst("flags:".count).drop { $0 == " " || $0 == "\t" }, radix: 8)
    }
}
