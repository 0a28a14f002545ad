import CPageTracking
import Foundation
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// Log-dirty across processes. The daemon holds each domain's log
/// (`SimulatedDomain`'s), so dom0 asks it; the writers hand it what it needs:
///
/// - A guest process's own writes: a userfaultfd tracks only the process that
///   created it, so each guest process creates one at join and sends it with its
///   `/proc/self/pagemap` to the daemon, with the ranges where it maps its memory
///   and, as it maps them, its share pools. The daemon write-protects and scans
///   those ranges only while logging is on.
/// - dom0's writable grant maps: the daemon pins and unpins them, and marks them.
/// - dom0's grant copies, which never reach the daemon: each sets the frame's bit
///   in the granter's grant-writer bitmap, a memfd the daemon hands dom0 with the
///   granter's table (`foreignAccess`).
extension RemoteHypervisor: DirtyLogging {
    /// Starts logging `domain`'s writes (dom0 only). `EOPNOTSUPP` when the
    /// domain's process could not hand over write tracking.
    public func startDirtyLog(_ domain: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.logDirty.rawValue, UInt64(domain.rawValue), 1]))
    }

    /// Stops logging `domain`'s writes (dom0 only).
    public func stopDirtyLog(_ domain: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.logDirty.rawValue, UInt64(domain.rawValue), 0]))
    }

    /// The frames of `domain` written since the previous call or the start, cleared (dom0 only).
    public func readAndClearDirty(_ domain: DomainID) throws(HypervisorError) -> DirtyBitmap {
        let reply = try link.call(WireMessage([DaemonOp.logDirty.rawValue, UInt64(domain.rawValue), 2]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        let w = reply.words
        if reply.fds.isEmpty { return try Self.inlineBitmap(w) }
        guard w.count == 3, reply.fds.count == 1, w[1] <= 1 << 24, w[2] == (w[1] + 63) / 64 else {
            throw HypervisorError(.closed, "malformed log-dirty reply")
        }
        var words = [UInt64](repeating: 0, count: Int(w[2]))
        let bytes = words.count * 8
        let got = words.withUnsafeMutableBytes { pread(reply.fds[0], $0.baseAddress, bytes, 0) }
        guard got == bytes else { throw .errno(Errno(rawValue: errno), "reading the dirty bitmap") }
        var bitmap = DirtyBitmap(frameCount: Int(w[1]))
        for (i, word) in words.enumerated() where word != 0 { bitmap.formUnion(word: UInt64(littleEndian: word), at: i) }
        return bitmap
    }

    /// The bitmap of a reply that carries its nonzero words itself, `[0, frames, n,
    /// index, word, …]`: `n` pairs, indexes ascending and inside the bitmap.
    static func inlineBitmap(_ w: [UInt64]) throws(HypervisorError) -> DirtyBitmap {
        guard w.count >= 3, w[1] <= 1 << 24, w[2] <= UInt64(w.count), w.count == 3 + 2 * Int(w[2]) else {
            throw HypervisorError(.closed, "malformed log-dirty reply")
        }
        let wordCount = (w[1] + 63) / 64
        var bitmap = DirtyBitmap(frameCount: Int(w[1]))
        var next: UInt64 = 0
        for pair in 0..<Int(w[2]) {
            let index = w[3 + 2 * pair]
            guard index >= next, index < wordCount else { throw HypervisorError(.closed, "malformed log-dirty reply") }
            bitmap.formUnion(word: w[4 + 2 * pair], at: Int(index))
            next = index + 1
        }
        return bitmap
    }

    /// A guest process gives the daemon its userfaultfd and pagemap, and the range
    /// of its memory. Without userfaultfd write-protect (an old kernel) nothing is
    /// sent, and a later start of log-dirty for this domain fails.
    func handOverWriteTracking(through link: DaemonLink? = nil) {
        let link = link ?? self.link
        guard !isPrivileged else { return }
        // With remap events: the next move's mremap keeps the registration and moves
        // whole page-table pages (see `GuestMemory.movingTrackedRanges`).
        let uffd = cpt_uffd_open(1)
        guard uffd >= 0 else { return }
        let pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard pagemap >= 0 else {
            Glibc.close(uffd)
            return
        }
        defer { Glibc.close(pagemap) }
        let words = [
            DaemonOp.trackWrites.rawValue, UInt64(UInt(bitPattern: memory.base)), 0, UInt64(memory.totalFrames),
        ]
        do {
            _ = try link.call(WireMessage(words, fds: [uffd, pagemap]))
            memory.keepTracking(uffd)
        } catch {
            Glibc.close(uffd)
            if getenv("XENPV_MIGRATION_TRACE") != nil { FileHandle.standardError.write(Data("handover: \(error)\n".utf8)) }
        }
    }
}
