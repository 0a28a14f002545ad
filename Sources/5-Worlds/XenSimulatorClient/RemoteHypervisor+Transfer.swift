import CXen
import Glibc
import XenLocks
import SystemPackage
import XenABI
import XenHypervisor

/// One share pool of a domain being saved or restored, mapped in a dom0 process.
public struct DomainPoolView: @unchecked Sendable {
    // @unchecked: a mapping its `DomainStateView` keeps until it goes.
    /// Its first frame in the domain's frame numbers (above its main memory).
    public let first: UInt64
    /// Frames in the pool.
    public let count: Int
    /// The domain the pool's pages are shared with.
    public let grantee: DomainID
    /// Whether the grantee may map them writable.
    public let writable: Bool
    /// Where the pool is mapped in this process.
    public let base: UnsafeMutableRawPointer

    /// Whether `frame` lies in this pool.
    public func contains(_ frame: UInt64) -> Bool { frame >= first && frame - first < UInt64(count) }

    /// The pool's memfd, kept while the view maps it (to find its data without touching it).
    let fd: Int32
}

/// A domain's state in a dom0 process: its memory (read and written through its memfd),
/// grant table and share pools (mapped), read-only for a save
/// (``RemoteHypervisor/exportDomain(_:)``), writable for a restore
/// (``RemoteHypervisor/importDomain(_:frames:)``). Unmapped and closed when released.
public final class DomainStateView: @unchecked Sendable {
    // @unchecked: `pools` is guarded by `lock`; the mappings and descriptors stay until
    // deinit (a pool the domain let go of stays until then too).
    /// The domain.
    public let domain: DomainID
    /// Frames of its main memory (its share pools lie above).
    public let mainFrames: Int
    /// Entries in its grant table (`grant_entry_v1`, 8 bytes each).
    public let grantEntries: Int
    /// Its grant table.
    public let table: UnsafeMutableRawPointer
    private let memoryFD: Int32
    private let lock = Lock()
    private var current: [DomainPoolView] = []
    private var retired: [DomainPoolView] = []

    init(domain: DomainID, mainFrames: Int, grantEntries: Int, memoryFD: Int32, table: UnsafeMutableRawPointer) {
        (self.domain, self.mainFrames, self.grantEntries, self.memoryFD, self.table) = (domain, mainFrames, grantEntries, memoryFD, table)
    }

    deinit {
        munmap(table, grantEntries * 8)
        Glibc.close(memoryFD)
        for p in current + retired {
            munmap(p.base, p.count * XenPage.size)
            Glibc.close(p.fd)
        }
    }

    /// Its share pools, by first frame.
    public var pools: [DomainPoolView] { lock.withLock { current } }

    func add(_ pool: DomainPoolView) { lock.withLock { current.append(pool); current.sort { $0.first < $1.first } } }

    /// Whether a pool at `first` of `count` frames is mapped here now.
    func hasPool(first: UInt64, count: Int) -> Bool { lock.withLock { current.contains { $0.first == first && $0.count == count } } }

    /// Keeps only the pools whose first frames are in `live`; the others stay mapped
    /// (unused) until the view goes, so an address handed out never dangles.
    func keepPools(_ live: Set<UInt64>) {
        lock.withLock {
            retired += current.filter { !live.contains($0.first) }
            current.removeAll { !live.contains($0.first) }
        }
    }

    /// Whether the domain has `frame` (main memory or a pool).
    public func holds(_ frame: UInt64) -> Bool { frame < UInt64(mainFrames) || pools.contains { $0.contains(frame) } }

    /// Copies the pages of `frames` (each one the domain ``holds(_:)``) into `out`, one
    /// page each in order.
    ///
    /// The memory is read and written through its memfds (`pread`, `pwrite`), one call
    /// per run of consecutive frames, never through a mapping: a toolstack process that
    /// touched a 256 MiB mapping spends ms of CPU tearing its page tables down when it lets
    /// go, and it does so in the resumed guest's first milliseconds on the destination.
    /// - Throws: `EINVAL` for a frame the domain does not have or an `out` too small, and
    ///   the call's error.
    public func read(_ frames: [UInt64], into out: UnsafeMutableRawBufferPointer) throws(HypervisorError) {
        guard out.count >= frames.count * XenPage.size else { throw .errno(.invalidArgument, "reading \(frames.count) pages into \(out.count) bytes") }
        try runs(of: frames) { (fd, offset, index, count) throws(HypervisorError) in
            try Self.transfer(count * XenPage.size, "reading the domain's memory") { done in
                pread(fd, out.baseAddress! + index * XenPage.size + done, count * XenPage.size - done, offset + off_t(done))
            }
        }
    }

    /// Writes `data` (one page for each of `frames`, in order) to the domain's memory; see
    /// ``read(_:into:)``.
    public func write(_ frames: [UInt64], from data: UnsafeRawBufferPointer) throws(HypervisorError) {
        guard data.count >= frames.count * XenPage.size else { throw .errno(.invalidArgument, "writing \(frames.count) pages from \(data.count) bytes") }
        try runs(of: frames) { (fd, offset, index, count) throws(HypervisorError) in
            try Self.transfer(count * XenPage.size, "writing the domain's memory") { done in
                pwrite(fd, data.baseAddress! + index * XenPage.size + done, count * XenPage.size - done, offset + off_t(done))
            }
        }
    }

    /// The memfd holding `frame` (main memory, else one of `pools`) and the frame's offset in it.
    private func place(_ frame: UInt64, _ pools: [DomainPoolView]) -> (fd: Int32, offset: off_t)? {
        if frame < UInt64(mainFrames) { return (memoryFD, off_t(frame) * off_t(XenPage.size)) }
        guard let p = pools.first(where: { $0.contains(frame) }) else { return nil }
        return (p.fd, off_t(frame - p.first) * off_t(XenPage.size))
    }

    /// Calls `body` with each run of `frames` that is consecutive in one memfd: its fd,
    /// its first page's offset there, the run's index in `frames` and its length.
    private func runs(of frames: [UInt64], _ body: (Int32, off_t, Int, Int) throws(HypervisorError) -> Void) throws(HypervisorError) {
        let pools = self.pools  // taken once: it is behind the view's lock
        var i = 0
        while i < frames.count {
            guard let start = place(frames[i], pools) else { throw .errno(.invalidArgument, "the domain has no frame \(frames[i])") }
            var n = 1
            while i + n < frames.count, frames[i + n] == frames[i] + UInt64(n), let next = place(frames[i + n], pools),
                next.fd == start.fd, next.offset == start.offset + off_t(n * XenPage.size) { n += 1 }
            try body(start.fd, start.offset, i, n)
            i += n
        }
    }

    /// Repeats `call` (given the bytes done so far) until `bytes` are done.
    private static func transfer(_ bytes: Int, _ what: String, _ call: (Int) -> Int) throws(HypervisorError) {
        var done = 0
        while done < bytes {
            let n = call(done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .errno(n < 0 ? Errno(rawValue: errno) : .ioError, what) }
            done += n
        }
    }

    /// The frames of main memory and of the pools that hold data, in order: those the
    /// domain's memfds have pages for (`SEEK_DATA`, which counts swapped-out pages as
    /// data). Found without touching a page, so a save of an idle 256 MiB guest reads only
    /// what it wrote (when the view was a mapping, reading every frame allocated and zeroed
    /// the never-written ones, and filled the whole memfd).
    public func framesHoldingData() -> [UInt64] {
        var out = Self.dataFrames(memoryFD, count: mainFrames, first: 0)
        for p in pools { out += Self.dataFrames(p.fd, count: p.count, first: p.first) }
        return out
    }

    private static func dataFrames(_ fd: Int32, count: Int, first: UInt64) -> [UInt64] {
        var out: [UInt64] = []
        let end = off_t(count) * off_t(XenPage.size)
        var at: off_t = 0
        while at < end {
            let data = lseek(fd, at, cxen_seek_data())
            // ENXIO: no data past `at`. Any other failure: every frame from `at` on
            // counts (sent and checked, as before), so nothing written is left out.
            if data < 0 && errno == ENXIO { break }
            let from = data < 0 ? at : data
            var to = data < 0 ? end : lseek(fd, from, cxen_seek_hole())
            if to < 0 || to > end { to = end }
            let firstPage = Int(from) / XenPage.size
            let pastPage = (Int(to) + XenPage.size - 1) / XenPage.size
            for f in firstPage..<max(firstPage, pastPage) { out.append(first + UInt64(f)) }
            at = off_t(max(firstPage + 1, pastPage)) * off_t(XenPage.size)
        }
        return out
    }
}

/// Save, restore and migration: what dom0's toolstack asks of the daemon (dom0 only;
/// anyone else is refused with `EPERM`). The toolstack writes and reads the stream;
/// the daemon hands it the domain's state and creates the restored domain.
extension RemoteHypervisor {
    /// Maps guest `id`'s memory, grant table and share pools read-only here. Its
    /// process must be joined; pools made later appear after ``refreshPools(of:)``.
    public func exportDomain(_ id: DomainID) throws(HypervisorError) -> DomainStateView {
        let reply = try askExport(id)
        var fds = reply.fds
        defer { for fd in fds where fd >= 0 { Glibc.close(fd) } }
        let (frames, entries) = (Int(reply.words[1]), Int(reply.words[2]))
        let table = try Mapping.map(fds[1], bytes: entries * 8, writable: false)
        let view = DomainStateView(domain: id, mainFrames: frames, grantEntries: entries, memoryFD: fds[0], table: table)
        fds[0] = -1
        try mapPools(reply, &fds, into: view)
        return view
    }

    /// Asks again for `view`'s domain's share pools: maps the ones made since, and
    /// leaves out of ``DomainStateView/pools`` the ones it let go of. Its memory and
    /// table stay mapped as they are (a domain's never change).
    public func refreshPools(of view: DomainStateView) throws(HypervisorError) {
        let reply = try askExport(view.domain)
        var fds = reply.fds
        defer { for fd in fds where fd >= 0 { Glibc.close(fd) } }
        guard Int(reply.words[1]) == view.mainFrames, Int(reply.words[2]) == view.grantEntries else {
            throw HypervisorError(.closed, "the domain's memory changed under a save")
        }
        try mapPools(reply, &fds, into: view)
    }

    private func askExport(_ id: DomainID) throws(HypervisorError) -> WireMessage {
        let reply = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 1]))
        let w = reply.words
        guard w.count >= 4, w[1] > 0, w[1] <= 1 << 20, w[2] > 0, w[2] <= 1 << 22, w[3] <= 14, w.count == 4 + 4 * Int(w[3]),
            reply.fds.count == 2 + Int(w[3])
        else {
            for fd in reply.fds { Glibc.close(fd) }
            throw HypervisorError(.closed, "malformed export reply")
        }
        return reply
    }

    /// Maps the reply's pools `view` lacks (taking their descriptors out of `fds`) and
    /// drops from its list the ones the reply no longer names.
    private func mapPools(_ reply: WireMessage, _ fds: inout [Int32], into view: DomainStateView) throws(HypervisorError) {
        let w = reply.words
        var live: Set<UInt64> = []
        for i in 0..<Int(w[3]) {
            let (first, count, grantee, writable) = (w[4 + 4 * i], w[5 + 4 * i], w[6 + 4 * i], w[7 + 4 * i] != 0)
            guard count > 0, count <= 1 << 20, first <= UInt64(UInt32.max), grantee <= UInt64(UInt16.max) else {
                throw HypervisorError(.closed, "malformed export reply")
            }
            live.insert(first)
            guard !view.hasPool(first: first, count: Int(count)) else { continue }
            let base = try Mapping.map(fds[2 + i], bytes: Int(count) * XenPage.size, writable: false)
            view.add(DomainPoolView(first: first, count: Int(count), grantee: DomainID(UInt16(grantee)), writable: writable, base: base,
                                    fd: fds[2 + i]))
            fds[2 + i] = -1
        }
        view.keepPools(live)
    }

    /// Whether guest `id`'s process waits in its `suspend` call.
    public func isSuspended(_ id: DomainID) throws(HypervisorError) -> Bool {
        let reply = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 2]))
        guard reply.words.count == 3 else { throw HypervisorError(.closed, "malformed transfer reply") }
        return reply.words[1] != 0
    }

    /// Whether guest `id`'s process is joined here and handed over its write tracking
    /// (`ESRCH` while no process of it is joined): a process arriving from another
    /// host does so last before its `suspend` returns.
    public func hasArrived(_ id: DomainID) throws(HypervisorError) -> Bool {
        let reply = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 2]))
        guard reply.words.count == 3 else { throw HypervisorError(.closed, "malformed transfer reply") }
        return reply.words[2] != 0
    }

    /// Takes guest `id`'s suspend for a save: the daemon no longer ends it at its
    /// deadline; ``resumeElsewhere(_:socketPath:token:)`` or ``cancelSuspend(_:)`` must follow.
    public func claimSuspend(_ id: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 3]))
    }

    /// Lets guest `id`'s suspended process go to the daemon at `socketPath`, where a
    /// restored copy waits for `token`, and releases the domain on this host.
    public func resumeElsewhere(_ id: DomainID, socketPath: String, token: DomainToken) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 4, token.high, token.low], text: socketPath))
    }

    /// Ends guest `id`'s suspend with `.cancelled`: it goes on here as before.
    public func cancelSuspend(_ id: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 5]))
    }

    /// Releases saved guest `id` on this host (its suspend claimed): the domain, its
    /// grants, ports and store entries go; its process stays parked in its `suspend`
    /// call until ``resumeParked(_:socketPath:token:)``.
    public func parkSuspended(_ id: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 6]))
    }

    /// Sends the parked process of saved domain `id` to the daemon at `socketPath`,
    /// where its restored copy waits for `token`. `ESRCH` when no such process waits here.
    public func resumeParked(_ id: DomainID, socketPath: String, token: DomainToken) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.transfer.rawValue, UInt64(id.rawValue), 7, token.high, token.low], text: socketPath))
    }

    /// Creates guest domain `id` (the id it had on the source; `EEXIST` if taken here)
    /// with `frames` frames of main memory, to be filled and then finished
    /// (``finishImport(_:)``) or dropped (``abortImport(_:)``, or this process leaving).
    public func importDomain(_ id: DomainID, frames: Int) throws(HypervisorError) -> DomainStateView {
        let entries = UInt64(32 * 512)
        let reply = try link.call(WireMessage([DaemonOp.importDomain.rawValue, 1, UInt64(id.rawValue), UInt64(max(0, frames)), entries]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        guard reply.words.count == 3, reply.fds.count == 2, reply.words[2] == entries, reply.words[1] >= UInt64(frames) else {
            throw HypervisorError(.closed, "malformed import reply")
        }
        let table = try Mapping.map(reply.fds[1], bytes: Int(entries) * 8)
        let memoryFD = fcntl(reply.fds[0], F_DUPFD_CLOEXEC, 0)
        guard memoryFD >= 0 else {
            munmap(table, Int(entries) * 8)
            throw .errno(Errno(rawValue: errno), "keeping the restored domain's memory")
        }
        return DomainStateView(domain: id, mainFrames: frames, grantEntries: Int(entries), memoryFD: memoryFD, table: table)
    }

    /// Adds a share pool at frame `first` to a domain being restored, mapped writable in `view`.
    public func importPool(_ view: DomainStateView, first: UInt64, grantee: DomainID, writable: Bool) throws(HypervisorError) -> DomainPoolView {
        let reply = try link.call(WireMessage([DaemonOp.importDomain.rawValue, 2, UInt64(view.domain.rawValue), first,
                                               UInt64(grantee.rawValue), writable ? 1 : 0]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        guard reply.fds.count == 1 else { throw HypervisorError(.closed, "malformed import-pool reply") }
        let count = 8192
        let base = try Mapping.map(reply.fds[0], bytes: count * XenPage.size)
        let pool = DomainPoolView(first: first, count: count, grantee: grantee, writable: writable, base: base,
                                  fd: fcntl(reply.fds[0], F_DUPFD_CLOEXEC, 0))
        view.add(pool)
        return pool
    }

    /// Ends a restore: the domain waits for the process that presents the returned token.
    public func finishImport(_ id: DomainID) throws(HypervisorError) -> DomainToken {
        let reply = try link.call(WireMessage([DaemonOp.importDomain.rawValue, 3, UInt64(id.rawValue)]))
        guard reply.words.count == 3 else { throw HypervisorError(.closed, "malformed finish-import reply") }
        return DomainToken(high: reply.words[1], low: reply.words[2])
    }

    /// Drops a restore that did not finish: the domain and its store entries go.
    public func abortImport(_ id: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.importDomain.rawValue, 0, UInt64(id.rawValue)]))
    }
}
