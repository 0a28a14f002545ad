import Atomics
import XenLocks
import CXen
import Foundation
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenStore

/// How a process joins the hypervisor daemon.
public enum DomainRequest: Sendable, Hashable {
    /// As dom0, the privileged control domain, for a tool (several dom0
    /// processes may join; each gets its own slice of dom0's frames and grant
    /// references). Only a process the daemon trusts (its own user, root, or
    /// its group) may.
    case dom0
    /// As dom0's backend process: like `dom0`, and the daemon admits only
    /// `DaemonPolicy.maxBackends` of them at once.
    case backend
    /// As a new guest domain with this many 4 KiB frames, created for this
    /// process and destroyed when it goes; the daemon, as toolstack, creates
    /// the devices asked for in the store (backend dom0). Trusted processes only.
    case newGuest(frames: Int, devices: GuestDevices = [])
    /// As the guest a dom0 process created with `RemoteHypervisor.createDomain`,
    /// proving it with the token the daemon issued then.
    case guest(token: DomainToken)
}

/// Devices the daemon creates for a new guest, as a domain configuration lists them.
public struct GuestDevices: OptionSet, Sendable, Hashable {
    /// One bit per device kind.
    public let rawValue: UInt64
    /// A device set from its bits, as the join message carries them.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `vif/0`.
    public static let vif = GuestDevices(rawValue: 1)
    /// `vbd/51712` (xvda).
    public static let vbd = GuestDevices(rawValue: 2)
}

/// The hypervisor as a process joined to `xenpv hypervisor` sees it: pass it to
/// the unchanged drivers exactly like a `SimulatedDomain`.
///
/// Set-up (map, unmap, bind, unbind) is a message to the daemon. The data path
/// is not: ring and data pages are this process's own `mmap`s of the granter's
/// share pool for this domain, a notify is an atomic on the channel's shared page plus, when the
/// peer sleeps, a one-byte write to the peer's wake pipe, and a dom0 grant copy
/// reads the granter's grant table and the pools it shares with dom0 directly.
///
/// If the daemon goes away the process cannot go on (its hypervisor is gone):
/// `onDaemonLost` runs once, by default printing a message and exiting with
/// status 3.
public final class RemoteHypervisor: Hypervisor, @unchecked Sendable {
    // @unchecked: `link` serialises requests; `foreign` is guarded by `lock`;
    // the rest is immutable after init.
    /// The domain the daemon gave this process: dom0 for `.dom0` and `.backend`, else the guest's id.
    public let domainID: DomainID
    /// The store, speaking as this domain over its own connection.
    public let store: XenStoreClient
    /// Where the daemon listens.
    public let socketPath: String
    let link: DaemonLink
    let storeTransport: MovableStoreTransport
    /// Bumped at each resume on another host: ports, maps and shares of an older
    /// epoch are gone, and releasing them is a no-op.
    let epoch = ManagedAtomic<UInt64>(0)
    let memory: GuestMemory
    let pools: SharePools
    let lock = Lock()
    var foreign: [DomainID: ForeignDomain] = [:]

    /// True when this process joined as dom0 (a tool or the backend process).
    public var isPrivileged: Bool { domainID == .dom0 }

    /// The handler run when the daemon's socket closes under a live process.
    public typealias LostHandler = @Sendable (String) -> Void

    /// Prints why and exits: a guest without a hypervisor has nothing left to do.
    public static let exitOnLoss: LostHandler = { message in
        FileHandle.standardError.write(Data("xenpv: \(message); exiting\n".utf8))
        exit(3)
    }

    /// Connects to the daemon at `socketPath` and joins as `request`.
    public init(socketPath: String, as request: DomainRequest, onDaemonLost: @escaping LostHandler = RemoteHypervisor.exitOnLoss)
        throws(HypervisorError)
    {
        // A notify to a handle whose process died writes to a pipe without a
        // reader: that must be EPIPE, not a signal killing this process (as
        // network servers do, this process ignores SIGPIPE from now on).
        signal(SIGPIPE, SIG_IGN)
        self.socketPath = socketPath
        let link = try DaemonLink(socketPath: socketPath)
        let words: [UInt64] =
            switch request {
            case .dom0: [0, 0, 0]
            case .backend: [0, 1, 0]
            case .newGuest(let f, let d): [1, UInt64(max(0, f)), d.rawValue]
            case .guest(let token): [2, token.high, token.low]
            }
        let reply = try link.call(WireMessage([DaemonOp.join.rawValue] + words))
        guard reply.words.count >= 8, reply.fds.count == 3, Self.joinReplyFits(reply.words) else {
            for fd in reply.fds { Glibc.close(fd) }
            throw HypervisorError(.closed, "malformed join reply from the hypervisor daemon")
        }
        defer { Glibc.close(reply.fds[0]); Glibc.close(reply.fds[1]) }
        let w = reply.words
        domainID = DomainID(UInt16(truncatingIfNeeded: w[1]))
        do {
            memory = try GuestMemory(
                owner: domainID, memoryFD: reply.fds[0], totalFrames: Int(w[4]), frames: Int(w[2])..<Int(w[2] + w[3]),
                tableFD: reply.fds[1], tableEntries: Int(w[7]), refs: UInt32(w[5])..<UInt32(w[6]))
        } catch {
            Glibc.close(reply.fds[2])
            throw error
        }
        storeTransport = MovableStoreTransport(connectedSocket: reply.fds[2])
        store = XenStoreClient(transport: storeTransport)
        self.link = link
        pools = SharePools(link: link, memory: memory, tracksWrites: domainID != .dom0)
        link.startWatching(socketPath: socketPath, onLost: onDaemonLost)
        handOverWriteTracking()
    }

    deinit { link.close() }

    /// Checked before any conversion: a join reply that does not hold together is an
    /// error, never a trap (frames, slice and references within what they index).
    static func joinReplyFits(_ w: [UInt64]) -> Bool {
        w[4] > 0 && w[4] <= 1 << 24 && w[3] <= w[4] && w[2] <= w[4] - w[3]
            && w[7] <= 1 << 22 && w[5] <= w[6] && w[6] <= w[7]
    }

    /// Leaves the daemon: a guest's domain is destroyed, a dom0 process's
    /// ports, mappings and grants are released.
    public func close() {
        store.close()
        link.close()
    }

    // MARK: Hypervisor

    /// Opens an event-channel handle whose binds are messages to the daemon and whose notifies go through the channel's shared page and the peer's wake pipe.
    public func openEventChannels() throws(HypervisorError) -> any EventChannels {
        try RemoteEventChannels(hypervisor: self)
    }

    /// Opens a grant-mapping handle: the daemon checks each map against the granter's table and passes the share pool set aside for this domain.
    public func openGrantMapper() throws(HypervisorError) -> any GrantMapper {
        RemoteGrantMapper(hypervisor: self)
    }

    /// Opens a grant-sharing handle whose pages come from the share pool this domain sets aside for each peer.
    public func openGrantSharer() throws(HypervisorError) -> any GrantSharer {
        RemoteGrantSharer(memory: memory, pools: pools, epoch: epoch)
    }

    /// The allocator of this process's slice of its domain's frames.
    public var pageAllocator: any PageAllocator { memory }

    /// Creates a guest domain with `frames` frames and `devices`, for another
    /// process to join with the returned token (dom0 only; the domain is
    /// destroyed if nobody joins it within the daemon's `pendingLifetime`).
    public func createDomain(frames: Int, devices: GuestDevices = []) throws(HypervisorError) -> (DomainID, DomainToken) {
        let reply = try link.call(WireMessage([DaemonOp.createDomain.rawValue, UInt64(max(0, frames)), devices.rawValue]))
        guard reply.words.count == 4 else { throw HypervisorError(.closed, "malformed create-domain reply") }
        return (DomainID(UInt16(truncatingIfNeeded: reply.words[1])), DomainToken(high: reply.words[2], low: reply.words[3]))
    }

    /// Destroys guest domain `id` now (dom0 only), as `xl destroy` does: a domain still
    /// waiting for its process is torn down at once; a joined one loses its process's
    /// connection (the process sees the hypervisor gone), and the daemon's usual cleanup of
    /// a departed guest follows (mappings, ports, the domain, its store entries).
    /// - Throws: `ESRCH` when there is no such guest domain.
    public func destroyDomain(_ id: DomainID) throws(HypervisorError) {
        _ = try link.call(WireMessage([DaemonOp.destroyDomain.rawValue, UInt64(id.rawValue)]))
    }

    /// What the daemon holds for every process (dom0 only): for checks and listings.
    public func report() throws(HypervisorError) -> DaemonReport {
        let reply = try link.call(WireMessage([DaemonOp.report.rawValue]))
        return try DaemonReport(words: reply.words)
    }

    // MARK: Foreign access (dom0's grant copy)

    /// What dom0 maps of a domain for grant copy: its grant table, read-only,
    /// and the pools that domain shares with dom0. Not its memory: what a
    /// guest keeps to itself stays out of dom0's processes too.
    final class ForeignDomain: @unchecked Sendable {
        // @unchecked: immutable after init.
        let table: UnsafeMutableRawPointer
        let entries: Int
        /// By first frame, ascending.
        let pools: [ForeignPool]
        /// The granter's grant-writer bitmap (log-dirty): a copy into frame `n` sets bit `n`.
        let dirty: UnsafeMutableRawPointer
        let dirtyBytes: Int

        init(table: UnsafeMutableRawPointer, entries: Int, pools: [ForeignPool], dirty: UnsafeMutableRawPointer, dirtyBytes: Int) {
            self.table = table
            self.entries = entries
            self.pools = pools.sorted { $0.first < $1.first }
            self.dirty = dirty
            self.dirtyBytes = dirtyBytes
        }

        deinit {
            munmap(table, entries * MemoryLayout<grant_entry_v1>.stride)
            munmap(dirty, dirtyBytes)
        }

        /// A grant copy wrote `frame` of the granter: its bit, for the daemon's next read-and-clear.
        func markDirty(_ frame: UInt64) {
            guard frame / 64 < UInt64(dirtyBytes / 8) else { return }
            let word = UnsafeAtomic<UInt64>(
                at: (dirty + Int(frame / 64) * 8).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
            // releasing: the copy's bytes before the bit; the daemon takes the word
            // with an acquiring exchange.
            _ = word.loadThenBitwiseOr(with: 1 << (frame % 64), ordering: .releasing)
        }

        func pool(containing frame: UInt64) -> ForeignPool? {
            var (lo, hi) = (0, pools.count)
            while lo < hi {
                let mid = (lo + hi) / 2
                if pools[mid].first + UInt64(pools[mid].count) <= frame { lo = mid + 1 } else { hi = mid }
            }
            return lo < pools.count && pools[lo].first <= frame ? pools[lo] : nil
        }
    }

    /// One share pool of another domain, mapped here (read-only if it is).
    final class ForeignPool: @unchecked Sendable {
        // @unchecked: an immutable mapping.
        let id: UInt64
        let first: UInt64
        let count: Int
        let writable: Bool
        let base: UnsafeMutableRawPointer

        init(id: UInt64, first: UInt64, count: Int, writable: Bool, base: UnsafeMutableRawPointer) {
            (self.id, self.first, self.count, self.writable, self.base) = (id, first, count, writable, base)
        }

        deinit { munmap(base, count * XenPage.size) }
    }

    /// `domain`'s table and shared pools, fetched from the daemon once, or
    /// again with `refresh` (pools already mapped are kept).
    func foreignDomain(_ domain: DomainID, refresh: Bool = false) throws(HypervisorError) -> ForeignDomain {
        let known = lock.withLock { foreign[domain] }
        if let known, !refresh { return known }
        let reply = try link.call(WireMessage([DaemonOp.foreignAccess.rawValue, UInt64(domain.rawValue)]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        let w = reply.words
        guard w.count >= 4, w[1] > 0, w[1] <= 1 << 20, w[2] <= 14, w.count == 4 + 4 * Int(w[2]), reply.fds.count == 2 + Int(w[2]),
            let dirtyBytes = w.last, dirtyBytes > 0, dirtyBytes <= 1 << 24, dirtyBytes % 8 == 0
        else { throw HypervisorError(.closed, "malformed foreign-access reply") }
        let entries = Int(w[1])
        var pools: [ForeignPool] = []
        for i in 0..<Int(w[2]) {
            let (id, first, count, writable) = (w[3 + 4 * i], w[4 + 4 * i], w[5 + 4 * i], w[6 + 4 * i] != 0)
            guard count > 0, count <= 1 << 20, first <= UInt64(UInt32.max) else { throw HypervisorError(.closed, "malformed foreign-access reply") }
            if let same = known?.pools.first(where: { $0.id == id }) {
                pools.append(same)
                continue
            }
            let base = try Mapping.map(reply.fds[1 + i], bytes: Int(count) * XenPage.size, writable: writable)
            pools.append(ForeignPool(id: id, first: first, count: Int(count), writable: writable, base: base))
        }
        let table = try Mapping.map(reply.fds[0], bytes: entries * MemoryLayout<grant_entry_v1>.stride, writable: false)
        let dirty: UnsafeMutableRawPointer
        do { dirty = try Mapping.map(reply.fds[1 + Int(w[2])], bytes: Int(dirtyBytes)) } catch {
            munmap(table, entries * MemoryLayout<grant_entry_v1>.stride)
            throw error
        }
        let f = ForeignDomain(table: table, entries: entries, pools: pools, dirty: dirty, dirtyBytes: Int(dirtyBytes))
        return lock.withLock {
            if !refresh, let existing = foreign[domain] { return existing }
            foreign[domain] = f
            return f
        }
    }

    /// Live mappings per granter. When the last goes (a backend let go of a
    /// device), the foreign view of that domain goes too, so a dead guest's
    /// memory is not kept by dom0 processes; a copy still running holds its
    /// own reference to the view until it ends.
    private var liveMappings: [DomainID: Int] = [:]

    func mapped(_ domain: DomainID) { lock.withLock { liveMappings[domain, default: 0] += 1 } }

    func unmapped(_ domain: DomainID) {
        lock.withLock {
            let n = (liveMappings[domain] ?? 1) - 1
            guard n <= 0 else { liveMappings[domain] = n; return }
            liveMappings[domain] = nil
            foreign[domain] = nil
        }
    }
}

/// Counts the daemon reports, for tests and listings.
public struct DaemonReport: Sendable, Hashable, CustomStringConvertible {
    /// Live domains, dom0 included.
    public var domains: [DomainID]
    /// Grant mappings held, by any process.
    public var mappings: Int
    /// Event-channel ports bound, by any process.
    public var ports: Int
    /// Processes joined.
    public var processes: Int
    /// Hypercall messages the daemon handled so far (set-up only: the data path adds none).
    public var calls: UInt64

    package init(words: [UInt64]) throws(HypervisorError) {
        // Counts past Int.max are malformed too, not a trap (found by Fuzz/ fuzz-daemon-wire).
        guard words.count >= 6, words[4] == UInt64(words.count - 6),
            let mappings = Int(exactly: words[1]), let ports = Int(exactly: words[2]),
            let processes = Int(exactly: words[3])
        else { throw HypervisorError(.closed, "malformed report") }
        self.mappings = mappings
        self.ports = ports
        self.processes = processes
        domains = words[5..<(words.count - 1)].map { DomainID(UInt16(truncatingIfNeeded: $0)) }
        calls = words[words.count - 1]
    }

    /// One line with the domains and counts, for logs and test messages.
    public var description: String {
        "domains \(domains.map(\.rawValue)), \(processes) processes, \(mappings) mappings, \(ports) ports, \(calls) calls"
    }
}

/// The socket to the daemon: one request at a time, and a watcher thread that
/// notices the daemon going away. After a save or migration the link moves to the
/// destination's daemon (`move(to:)`), under the same lock as a request: other
/// threads' requests wait for the move and then go to the destination.
final class DaemonLink: @unchecked Sendable {
    // @unchecked: `fd` changes only under `callLock` (and `stateLock`); `closed`,
    // `expectingClose`, `lostWhileExpecting` and the watcher under `stateLock`.
    private(set) var fd: Int32
    let callLock = Lock()
    private let stateLock = Lock()
    private var closed = false
    /// A suspend is in flight: the daemon closing the socket is expected, not a loss.
    private var expectingClose = false
    private var lostWhileExpecting = false
    private var stopPipe: WakePipe?
    private var retired: [WakePipe] = []
    private var onLost: RemoteHypervisor.LostHandler?
    private var socketPath: String

    init(socketPath: String) throws(HypervisorError) {
        self.socketPath = socketPath
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard socketPath.utf8.count < capacity else { throw .errno(.fileNameTooLong, "socket path \(socketPath) is too long") }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "socket") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in socketPath.utf8.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(fd)
            let why = e == .noSuchFileOrDirectory ? "no hypervisor daemon socket at \(socketPath)" :
                e == .connectionRefused ? "nothing listens on \(socketPath) (is `xenpv hypervisor` running?)" :
                "connecting to the hypervisor daemon at \(socketPath)"
            throw .errno(e, why)
        }
        self.fd = fd
    }

    deinit {
        close()
        if fd >= 0 { Glibc.close(fd) }
        stopWatcher()
        for p in retired {
            Glibc.close(p.read)
            Glibc.close(p.write)
        }
    }

    /// Sends a request and waits for its reply; a failure reply throws its error.
    func call(_ request: WireMessage) throws(HypervisorError) -> WireMessage {
        try callLock.withLock { () throws(HypervisorError) -> WireMessage in try callLocked(request) }
    }

    /// `call` with `callLock` held by the caller.
    func callLocked(_ request: WireMessage, timeoutMS: Int32 = -1) throws(HypervisorError) -> WireMessage {
        guard Wire.send(fd, request) else { throw HypervisorError(.closed, "the hypervisor daemon went away") }
        if timeoutMS >= 0 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var n: Int32
            repeat { n = poll(&p, 1, timeoutMS) } while n < 0 && errno == EINTR
            guard n > 0 else { throw .errno(.timedOut, "no answer from the hypervisor daemon in \(timeoutMS) ms") }
        }
        guard let reply = Wire.receive(fd) else { throw HypervisorError(.closed, "the hypervisor daemon went away") }
        if let error = reply.error {
            for fd in reply.fds { Glibc.close(fd) }
            throw error
        }
        return reply
    }

    /// From now until `endExpectingClose`, the daemon closing the socket is no loss.
    func expectClose() { stateLock.withLock { expectingClose = true } }

    /// Ends `expectClose`; true if the socket closed meanwhile (the caller decides).
    @discardableResult
    func endExpectingClose() -> Bool {
        stateLock.withLock {
            expectingClose = false
            defer { lostWhileExpecting = false }
            return lostWhileExpecting
        }
    }

    /// Takes over `other`'s socket (joined to another daemon), closing ours; the caller
    /// holds `callLock`. The watcher follows the new socket.
    func move(to other: DaemonLink, closingOld closeOld: (Int32) -> Void = { Glibc.close($0) }) {
        let taken = other.detach()
        stopWatcher()
        let old = stateLock.withLock { () -> Int32 in
            defer { fd = taken.fd; socketPath = taken.path }
            return fd
        }
        if old >= 0 { closeOld(old) }
        if let onLost { startWatching(socketPath: socketPath, onLost: onLost) }
    }

    /// Gives up this link's socket to another link object.
    private func detach() -> (fd: Int32, path: String) {
        stopWatcher()
        return callLock.withLock {
            stateLock.withLock {
                closed = true
                defer { fd = -1 }
                return (fd, socketPath)
            }
        }
    }

    private func stopWatcher() {
        let stop = stateLock.withLock { () -> WakePipe? in
            defer { stopPipe = nil }
            return stopPipe
        }
        guard let stop else { return }
        WakePipe.wake(stop.write)
        // Closed with the link: the watcher may still be polling it.
        stateLock.withLock { retired.append(stop) }
    }

    func startWatching(socketPath: String, onLost: @escaping RemoteHypervisor.LostHandler) {
        guard let stop = WakePipe.make() else { return }
        let fd = stateLock.withLock { () -> Int32 in
            stopPipe = stop
            self.onLost = onLost
            return self.fd
        }
        startDetachedThread(named: "hv-daemon-watch") { [weak self] in
            var fds = [pollfd(fd: fd, events: Int16(0x2000 /* POLLRDHUP */), revents: 0), pollfd(fd: stop.read, events: Int16(POLLIN), revents: 0)]
            while true {
                let n = poll(&fds, 2, -1)
                if n < 0 && errno == EINTR { continue }
                if fds[1].revents != 0 { return }
                if fds[0].revents & (Int16(0x2000) | Int16(POLLHUP) | Int16(POLLERR)) != 0 { break }
            }
            guard let self else { return }
            let report = self.stateLock.withLock { () -> Bool in
                if self.closed || self.fd != fd { return false }
                if self.expectingClose {
                    self.lostWhileExpecting = true
                    return false
                }
                return true
            }
            if report { onLost("the hypervisor daemon at \(socketPath) went away") }
        }
    }

    /// Reports the loss the watcher held back during a suspend that failed.
    func reportLoss() {
        let handler = stateLock.withLock { closed ? nil : onLost }
        handler?("the hypervisor daemon at \(socketPath) went away")
    }

    func close() {
        let first = stateLock.withLock { () -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        stopWatcher()
        if fd >= 0 { _ = shutdown(fd, Int32(SHUT_RDWR)) }
    }
}
