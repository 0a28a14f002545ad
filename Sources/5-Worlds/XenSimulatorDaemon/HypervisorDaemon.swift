import XenLocks
import Atomics
import CXen
import Dispatch
import Foundation
import Glibc
import Logging
import SystemPackage
import XenABI
import XenBus
import XenHypervisor
import XenSimulator
import XenSimulatorClient
import XenSockets
import XenStore
import XenStoreServer

/// The hypervisor daemon (`xenpv hypervisor --socket PATH`): one simulated
/// machine shared by several processes.
///
/// It owns a `SimulatedHypervisor` (domains' memory, grant tables) and, as
/// dom0's toolstack would, a `XenStoreServer`. A process joins over a Unix
/// seqpacket socket as dom0 or as a guest; its hypercalls are messages on
/// that socket (`DaemonOp`), its memory, grant table, channel pages and store
/// connection arrive as descriptors.
///
/// Where trust lies (SECURITY.md has the whole model):
/// - dom0 is who the kernel says connected (`SO_PEERCRED`): root, the daemon's
///   own user or `DaemonPolicy.trusted`'s group, never who a client claims to
///   be. Anyone else may join only a domain a dom0 process created for it, by
///   presenting the token the daemon issued (`DaemonOp.createDomain`).
/// - The daemon is the hypervisor: it checks every map against the granter's
///   table (the in-process checks and statuses). A domain's main memory never
///   leaves its own process(es): the pages it grants lie in share pools set
///   aside per peer (`SharePoolRegistry`), and a mapper receives only pools
///   set aside for it, after a verified grant; dom0's grant copy receives the
///   pools shared with dom0 and the granter's table, read-only.
/// - A guest receives its own memory and table, its own share pools, the pools
///   of its verified maps, the pages of channels it is an end of, and the
///   write ends of its peers' wake pipes, nothing else.
/// - Each process is a domain: when its socket closes (exit or crash) the
///   daemon unpins its mappings, closes its ports (peers see `ENOTCONN`), and
///   for a guest destroys the domain and removes its home and its devices'
///   backend directories from the store, found under dom0's own backend
///   directory, never through a path the guest wrote.
/// - Everything a client can make the daemon hold is capped (`DaemonPolicy`):
///   connections in all and per user, ports and mappings per guest process,
///   domains waiting for their guest, dom0 backend processes.
///
/// One thread serves every connection (a poll loop); toolstack work in the
/// store runs, in order, on one task on a thread of its own, and a join that
/// waits for it is answered when it is done, without holding up other
/// connections.
public final class HypervisorDaemon: @unchecked Sendable {
    // @unchecked: the tables below are guarded by `lock`; the poll set and
    // `accepting` belong to the loop thread.
    /// The path of the seqpacket socket processes join through.
    public let socketPath: String
    /// The store's own dom0 socket (`SOCKET.xenstore`), for tools.
    public var storeSocketPath: String { socketPath + ".xenstore" }
    /// The simulated machine the daemon serves; its domains are the joined processes'.
    public let hypervisor: SimulatedHypervisor
    /// The store the daemon runs as dom0's toolstack would; guests reach it through their own connections.
    public let store: XenStoreServer
    /// Who counts as dom0 and the caps on what clients can make the daemon hold, fixed at init.
    public let policy: DaemonPolicy
    let logger: Logger
    let lock = Lock()
    private var listenFD: Int32 = -1
    private var stopPipe: WakePipe?
    /// Work finished off the loop (a toolstack job's reply) waits here for the loop.
    private var posted: [@Sendable (inout DaemonPoller) -> Void] = []
    private var postPipe: WakePipe?
    var connections: [ObjectIdentifier: Connection] = [:]
    private var ports: [PortKey: PortEntry] = [:]
    private var nextHandle: UInt32 = 1
    /// Hypercall messages handled since start: the data path must not add to it.
    private var calls: UInt64 = 0
    private var slices: [Bool]
    private var stopped = false
    private var toolstackStore: XenStoreClient?
    private var toolstack: AsyncStream<@Sendable () async -> Void>.Continuation?
    /// Domains a dom0 process created, waiting for the guest that holds their token.
    var pending: [DomainToken: PendingDomain] = [:]
    /// Restored domains whose share pools wait for their process (`DaemonOp.adoptPools`), by their holder.
    var restoredPools: [DomainID: ObjectIdentifier] = [:]
    private let refusals = RateLimitedLog(interval: 10)
    /// The memory each process sets aside for the pages it shares, per peer.
    let pools = SharePoolRegistry()

    /// dom0 frames and grant references are cut into this many slices, one per dom0 process.
    static let dom0Slices = 8
    static let sliceFrames = 1024
    /// Pins a guest's process may hold (a hostile one must not grow the daemon's tables without bound).
    static let guestPinLimit = 16384
    /// Pins a dom0 process may hold: every guest's persistent grants, bounded all the same.
    static let dom0PinLimit = 1 << 20
    /// Share pools one map may span: their descriptors travel in one record (at most 16).
    static let poolsPerMap = 8

    struct PortKey: Hashable { var domain: UInt16; var port: UInt32 }

    final class Channel {
        let memory: UnsafeMutableRawPointer
        let fd: Int32
        let page: ChannelPage
        /// The domain allowed to bind to end 0.
        let remote: DomainID
        var bound: PortKey?
        var generation: UInt32 = 0

        init(remote: DomainID) throws(HypervisorError) {
            let fd = cxen_memfd_create("xenpv-evtchn", 1)
            guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "memfd for a channel page") }
            // Sealed: both ends' processes get the page, and the daemon writes it too.
            guard ftruncate(fd, off_t(XenPage.size)) == 0, MemfdSeals.fixSize(fd) else {
                let e = Errno(rawValue: errno)
                Glibc.close(fd)
                throw .errno(e, "sizing and sealing a channel page")
            }
            do { memory = try Mapping.map(fd, bytes: XenPage.size) } catch {
                Glibc.close(fd)
                throw error
            }
            self.fd = fd
            self.remote = remote
            page = ChannelPage(base: memory)
        }

        deinit {
            munmap(memory, XenPage.size)
            Glibc.close(fd)
        }
    }

    struct PortEntry {
        let channel: Channel
        let end: Int
        let owner: ObjectIdentifier
        /// The write end of the owning handle's wake pipe.
        let wakeFD: Int32
    }

    struct MapRecord {
        let granter: SimulatedDomain
        let refs: [GrantRef]
        let writable: Bool
    }

    struct PendingDomain {
        let domain: SimulatedDomain
        let deadline: UInt64
    }

    final class Connection: @unchecked Sendable {
        // @unchecked: fields are guarded by the daemon's lock.
        let fd: Int32
        let peer: PeerCredentials
        /// The kernel says the peer may act as dom0 (`DaemonPolicy.trusted`).
        let trusted: Bool
        var domain: SimulatedDomain?
        var slice: Int?
        var isBackend = false
        var maps: [UInt32: MapRecord] = [:]
        var ports: Set<UInt32> = []
        /// A guest process's write tracking for log-dirty (its userfaultfd and pagemap).
        var writes: PageWriteTracker?
        /// Ranges added to `writes` after the first (its share pools), against a cap.
        var trackedRanges = 0
        /// Grant pins held by this process's mappings, against its limit.
        var pins = 0
        /// A reply is being prepared off the loop; the connection is not read meanwhile.
        var waiting = false
        /// A guest process waits in its `suspend` call (`DaemonOp.suspend`) until this
        /// deadline, unless dom0 claimed the suspend for a save or migration.
        var suspend: (deadline: UInt64, claimed: Bool)?
        /// The dom0 process that claimed `suspend`: if it leaves first, the suspend is cancelled.
        var claimer: ObjectIdentifier?
        /// The domain this process belonged to before a save released it; the process
        /// waits in its suspend call for a restore (`DaemonOp.transfer`, resume parked).
        var parked: DomainID?
        /// Domains this dom0 process is restoring (`DaemonOp.importDomain`), destroyed if it leaves first.
        var imports: Set<DomainID> = []
        var closed = false
        init(fd: Int32, peer: PeerCredentials, trusted: Bool) {
            self.fd = fd
            self.peer = peer
            self.trusted = trusted
        }
    }

    /// A daemon that will listen on `socketPath` under `policy`.
    public init(socketPath: String, policy: DaemonPolicy = DaemonPolicy(), logger: Logger = Logger(label: "xenpv-hypervisor")) {
        self.socketPath = socketPath
        self.policy = policy
        self.logger = logger
        hypervisor = SimulatedHypervisor(
            dom0Frames: Self.dom0Slices * Self.sliceFrames + SharePoolRegistry.dom0Region(slices: Self.dom0Slices))
        // The store's dom0 socket admits whom the daemon admits as dom0.
        store = XenStoreServer(socketPath: socketPath + ".xenstore", logger: logger, group: policy.trusted.group)
        slices = Array(repeating: false, count: Self.dom0Slices)
    }

    deinit { stop() }

    /// Binds the socket and starts serving processes.
    public func start() throws(HypervisorError) {
        let fd: Int32
        do throws(LocalSocketError) {
            fd = try LocalSocket.listen(at: socketPath, kind: .seqpacket, access: policy.socketAccess, nonBlocking: true)
        } catch {
            throw .errno(error.errno ?? .invalidArgument, "listening on \(socketPath): \(error)")
        }
        do { try store.start() } catch {
            Glibc.close(fd)
            unlink(socketPath)
            throw .errno(.addressInUse, "starting the store: \(error)")
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
            store.stop()
            Glibc.close(fd)
            unlink(socketPath)
            throw .errno(Errno(rawValue: errno), "socketpair for the toolstack's store connection")
        }
        store.adopt(connectedSocket: pair[0], as: .dom0)
        let client = XenStoreClient(transport: XenStoreSocketTransport(connectedSocket: pair[1]))
        toolstackStore = client
        // One task runs the toolstack's store work in the order it was asked
        // for: a domain's removal never overtakes its creation. It runs on a thread
        // of its own: the daemon answers a join only after the store work it needs,
        // which on the cooperative pool could wait behind whatever holds the pool's
        // few threads (a test waiting for the very join it asked for, at worst).
        let (jobs, continuation) = AsyncStream<@Sendable () async -> Void>.makeStream()
        toolstack = continuation
        let executor = ThreadExecutor(name: "xenpv-toolstack")
        Task(executorPreference: executor) {
            for await job in jobs { await job() }
            executor.finish()
        }

        listenFD = fd
        guard let stop = WakePipe.make(), let post = WakePipe.make() else { throw .errno(Errno(rawValue: errno), "pipe") }
        stopPipe = stop
        postPipe = post
        startDetachedThread(named: "hv-daemon") { [self] in serveLoop(stop: stop.read, posted: post.read) }
        logger.info("hypervisor daemon listening", metadata: ["socket": "\(socketPath)"])
    }

    /// Disconnects every process (each exits: its hypervisor is gone), stops the store.
    /// Waits at most `timeout` seconds for the store's loop thread (none at all for 0: a
    /// stop asked for, as from a `deinit` on the cooperative pool); whether it ended in
    /// time (true too when the daemon was stopped already).
    @discardableResult
    public func stop(timeout: Double = 5) -> Bool {
        let first = lock.withLock { () -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return true }
        if let stop = stopPipe { WakePipe.wake(stop.write) }
        if listenFD >= 0 { unlink(socketPath) }
        toolstack?.finish()
        toolstackStore?.close()
        return store.stop(timeout: timeout)
    }

    /// What every process holds (for tests and `xenpv list`).
    public func report() -> DaemonReport {
        let words = lock.withLock { reportWords() }
        // Built by us, so it parses.
        return try! DaemonReport(words: words)
    }

    private func reportWords() -> [UInt64] {
        let maps = connections.values.reduce(0) { $0 + $1.maps.count }
        let domains = hypervisor.domainIDs.map { UInt64($0.rawValue) }
        return [0, UInt64(maps), UInt64(ports.count), UInt64(connections.count), UInt64(domains.count)] + domains + [calls]
    }

    /// Domains created for a token whose guest has not joined yet.
    public var pendingDomains: Int { lock.withLock { pending.count } }

    // MARK: Serving

    /// The loop thread: accepts, reads one record per ready connection, answers.
    private func serveLoop(stop: Int32, posted postRead: Int32) {
        var poller = DaemonPoller(listen: listenFD, stop: stop, posted: postRead)
        var acceptPausedUntil: UInt64 = 0
        while true {
            let now = cxen_monotonic_ns()
            poller.listening = now >= acceptPausedUntil
            // Wake for the accept back-off to end and for waiting domains to expire.
            let timeoutMS: Int32 = poller.listening ? 1000 : Int32(max(1, (acceptPausedUntil - now) / 1_000_000))
            let ready = poller.wait(timeoutMS: timeoutMS)
            if ready.stop { break }
            if ready.posted { runPosted(postRead, &poller) }
            for (conn, events) in ready.connections {
                let (waiting, closed) = lock.withLock { (conn.waiting, conn.closed) }
                // Closed earlier in this turn (a deferred reply that could not be sent).
                if closed { continue }
                if waiting {
                    // Not read while its reply is prepared; a hang-up still ends it.
                    if events & Int16(POLLHUP | POLLERR) != 0 { close(conn, &poller) }
                    continue
                }
                serviceOne(conn, &poller)
            }
            if ready.listener, !acceptAll(&poller) {
                acceptPausedUntil = cxen_monotonic_ns() + 100_000_000
            }
            expirePending()
            expireSuspends(&poller)
        }
        for conn in poller.all { close(conn, &poller) }
        Glibc.close(listenFD)
        Glibc.close(postRead)
    }

    /// Accepts what is waiting; false when the process is out of descriptors
    /// (the caller stops listening for a moment instead of spinning on EMFILE).
    private func acceptAll(_ poller: inout DaemonPoller) -> Bool {
        while true {
            let c = accept(listenFD, nil, nil)
            if c < 0 {
                switch errno {
                case EINTR, ECONNABORTED: continue
                case EAGAIN, EWOULDBLOCK: return true
                default:
                    refusals.log(logger, "accept failed: \(Errno(rawValue: errno)); pausing accepts")
                    return false
                }
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
            guard let peer = PeerCredentials.of(c) else {
                Glibc.close(c)
                continue
            }
            let trusted = policy.trusted.trusts(peer)
            let conn = Connection(fd: c, peer: peer, trusted: trusted)
            let refusal: String? = lock.withLock {
                if stopped { return "stopping" }
                if connections.count >= policy.maxConnections { return "\(connections.count) connections already" }
                if !trusted, connections.values.count(where: { $0.peer.uid == peer.uid }) >= policy.maxConnectionsPerUser {
                    return "user \(peer.uid) has \(policy.maxConnectionsPerUser) connections already"
                }
                connections[ObjectIdentifier(conn)] = conn
                return nil
            }
            if let refusal {
                refusals.log(logger, "refused a connection from \(peer): \(refusal)")
                Glibc.close(c)
                continue
            }
            poller.add(conn)
        }
    }

    /// Reads and answers one record of `conn`, or closes it.
    private func serviceOne(_ conn: Connection, _ poller: inout DaemonPoller) {
        switch Wire.receiveNonBlocking(conn.fd) {
        case .wouldBlock: return
        case .closed: close(conn, &poller)
        case .message(let request):
            switch handle(request, from: conn) {
            case .reply(let reply, let after):
                for fd in request.fds where !after.keepRequestFDs { Glibc.close(fd) }
                let sent = Wire.send(conn.fd, reply)
                for fd in after.fds { Glibc.close(fd) }
                // A client that lets its replies pile up is not waiting for them: drop it.
                if !sent { close(conn, &poller) }
            case .later:
                for fd in request.fds { Glibc.close(fd) }
                lock.withLock { conn.waiting = true }
                poller.pause(conn)
            }
        }
    }

    /// Answers `conn` from the loop once off-loop work is done.
    func answerLater(_ conn: Connection, _ reply: WireMessage, _ after: AfterReply) {
        post { [self] poller in
            let live = lock.withLock { () -> Bool in
                conn.waiting = false
                return !conn.closed
            }
            let sent = live && Wire.send(conn.fd, reply)
            for fd in after.fds { Glibc.close(fd) }
            if sent { poller.resume(conn) } else if live { close(conn, &poller) }
        }
    }

    func post(_ work: @escaping @Sendable (inout DaemonPoller) -> Void) {
        lock.withLock { posted.append(work) }
        if let p = postPipe { WakePipe.wake(p.write) }
    }

    private func runPosted(_ postRead: Int32, _ poller: inout DaemonPoller) {
        var sink = [UInt8](repeating: 0, count: 64)
        while read(postRead, &sink, sink.count) > 0 {}
        let work = lock.withLock { () -> [@Sendable (inout DaemonPoller) -> Void] in
            defer { posted = [] }
            return posted
        }
        for w in work { w(&poller) }
    }

    func close(_ conn: Connection, _ poller: inout DaemonPoller) {
        poller.remove(conn)
        let first = lock.withLock { () -> Bool in
            defer { conn.closed = true }
            return !conn.closed
        }
        guard first else { return }
        disconnect(conn)
        Glibc.close(conn.fd)
    }

    struct AfterReply {
        var fds: [Int32] = []
        var keepRequestFDs = false
    }

    enum Outcome {
        case reply(WireMessage, AfterReply)
        /// Answered later through `answerLater`; the request's descriptors are closed now.
        case later
    }

    private func handle(_ m: WireMessage, from conn: Connection) -> Outcome {
        lock.withLock { calls &+= 1 }
        guard let opWord = m.words.first, let op = DaemonOp(rawValue: opWord) else {
            return .reply(.failure(.errno(.invalidArgument, "unknown hypercall")), AfterReply())
        }
        do throws(HypervisorError) {
            if op == .join { return try join(m, conn) }
            guard let domain = lock.withLock({ conn.domain }) else { throw .errno(.invalidArgument, "join first") }
            switch op {
            case .join: fatalError("handled above")
            case .map:
                let (reply, after) = try map(m, conn, domain)
                return .reply(reply, after)
            case .sharePool:
                let (reply, after) = try sharePool(m, conn, domain)
                return .reply(reply, after)
            case .unmap: return .reply(try unmap(m, conn), AfterReply())
            case .foreignAccess:
                let (reply, after) = try foreignAccess(m, conn, domain)
                return .reply(reply, after)
            case .bindUnbound:
                let (reply, after) = try bindUnbound(m, conn, domain)
                return .reply(reply, after)
            case .bindInterdomain:
                let (reply, after) = try bindInterdomain(m, conn, domain)
                return .reply(reply, after)
            case .peer:
                let (reply, after) = try peer(m, conn, domain)
                return .reply(reply, after)
            case .unbind: return .reply(try unbind(m, conn, domain), AfterReply())
            case .report:
                guard domain.isPrivileged else { throw .errno(.notPermitted, "report: only dom0 may ask") }
                return .reply(WireMessage(lock.withLock { reportWords() }), AfterReply())
            case .createDomain: return try createDomain(m, conn, domain)
            case .trackWrites: return try trackWrites(m, conn, domain)
            case .logDirty: return try logDirty(m, conn, domain)
            case .destroyDomain: return .reply(try destroyDomain(m, conn, domain), AfterReply())
            case .suspend: return try suspend(m, conn, domain)
            case .transfer:
                let (reply, after) = try transfer(m, conn, domain)
                return .reply(reply, after)
            case .importDomain:
                let (reply, after) = try importDomain(m, conn, domain)
                return .reply(reply, after)
            case .adoptPools:
                let (reply, after) = try adoptPools(m, conn, domain)
                return .reply(reply, after)
            }
        } catch {
            return .reply(.failure(error), AfterReply())
        }
    }

    // MARK: Operations

    /// `[join, 0, role]` as dom0 (role 1: a backend process), `[join, 1, frames,
    /// devices]` as a new guest (both only for a trusted peer), `[join, 2,
    /// token…]` as the guest a dom0 process created for that token.
    private func join(_ m: WireMessage, _ conn: Connection) throws(HypervisorError) -> Outcome {
        guard lock.withLock({ conn.domain == nil }) else { throw .errno(.invalidArgument, "already joined") }
        guard m.words.count >= 3 else { throw .errno(.invalidArgument, "join: malformed") }
        switch m.words[1] {
        case 0:
            guard conn.trusted else {
                refusals.log(logger, "refused dom0 to \(conn.peer): not a trusted user")
                throw .errno(.notPermitted, "join as dom0: \(conn.peer) is not trusted by this daemon")
            }
            let backend = m.words[2] == 1
            let slice = try lock.withLock { () throws(HypervisorError) -> Int in
                if backend {
                    let live = connections.values.filter { $0.isBackend && !$0.closed && Self.isAlive($0.fd) }.count
                    guard live < policy.maxBackends else {
                        throw .errno(.resourceBusy, "a dom0 backend process is already joined (at most \(policy.maxBackends))")
                    }
                }
                guard let s = slices.firstIndex(of: false) else { throw .errno(.tooManyUsers, "too many dom0 processes") }
                slices[s] = true
                conn.slice = s
                conn.isBackend = backend
                return s
            }
            let entries = UInt32(hypervisor.dom0.grantTableSize)
            let per = entries / UInt32(Self.dom0Slices)
            let refs = max(GrantRef.reservedCount, UInt32(slice) * per)..<(UInt32(slice) + 1) * per
            let (reply, after) = try joinReply(conn, hypervisor.dom0, frames: slice * Self.sliceFrames..<(slice + 1) * Self.sliceFrames, refs: refs)
            return .reply(reply, after)
        case 1:
            guard conn.trusted else {
                throw .errno(.notPermitted, "join as a new guest: \(conn.peer) is not trusted; join with a token a dom0 process created")
            }
            let devices = m.words.count > 3 ? m.words[3] : 0
            let domain = try newDomain(frames: m.words[2])
            let (reply, after) = try joinReply(conn, domain, frames: 0..<mainFrames(of: domain), refs: GrantRef.reservedCount..<UInt32(domain.grantTableSize))
            toolstackJob { [self] store in
                await plug(domain.domainID, devices: devices, on: store)
                answerLater(conn, reply, after)
            }
            return .later
        case 2:
            guard m.words.count == 4 else { throw .errno(.invalidArgument, "join with a token: malformed") }
            let token = DomainToken(high: m.words[2], low: m.words[3])
            guard let domain = lock.withLock({ pending.removeValue(forKey: token)?.domain }) else {
                refusals.log(logger, "refused a join from \(conn.peer): unknown or used token")
                throw .errno(.notPermitted, "join with a token: no domain waits for this token")
            }
            let (reply, after) = try joinReply(conn, domain, frames: 0..<mainFrames(of: domain), refs: GrantRef.reservedCount..<UInt32(domain.grantTableSize))
            return .reply(reply, after)
        default:
            throw .errno(.invalidArgument, "join: unknown kind \(m.words[1])")
        }
    }

    /// `[createDomain, frames, devices]` from a trusted dom0 process: a guest
    /// domain with its home and devices in the store, waiting (at most
    /// `pendingLifetime` seconds) for the process that presents the token.
    private func createDomain(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> Outcome {
        guard me.isPrivileged, conn.trusted else { throw .errno(.notPermitted, "create domain: only dom0 may") }
        guard m.words.count == 3 else { throw .errno(.invalidArgument, "create domain: malformed") }
        guard lock.withLock({ pending.count < policy.maxPendingDomains }) else {
            throw .errno(.noSpace, "create domain: \(policy.maxPendingDomains) domains already wait for their guest")
        }
        let domain = try newDomain(frames: m.words[1])
        let token = DomainToken.random()
        let deadline = cxen_monotonic_ns() &+ UInt64(policy.pendingLifetime * 1e9)
        lock.withLock { pending[token] = PendingDomain(domain: domain, deadline: deadline) }
        let devices = m.words[2]
        toolstackJob { [self] store in
            await plug(domain.domainID, devices: devices, on: store)
            answerLater(conn, WireMessage([0, UInt64(domain.domainID.rawValue), token.high, token.low]), AfterReply())
        }
        return .later
    }

    /// `[destroyDomain, domid]` from a trusted dom0 process: a pending domain is
    /// destroyed here; a joined one has its process's connection shut down, and the
    /// loop's close of that connection does what a departing guest's close does.
    private func destroyDomain(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> WireMessage {
        guard me.isPrivileged, conn.trusted else { throw .errno(.notPermitted, "destroy domain: only dom0 may") }
        guard m.words.count == 2, m.words[1] > 0, m.words[1] < UInt64(DomainID.firstReserved.rawValue) else {
            throw .errno(.invalidArgument, "destroy domain: malformed")
        }
        let id = DomainID(UInt16(m.words[1]))
        enum Found { case pending(SimulatedDomain), joined([Int32]), none }
        let found = lock.withLock { () -> Found in
            if let key = pending.first(where: { $0.value.domain.domainID == id })?.key, let p = pending.removeValue(forKey: key) {
                return .pending(p.domain)
            }
            let fds = connections.values.filter { !$0.closed && $0.domain?.domainID == id }.map(\.fd)
            return fds.isEmpty ? .none : .joined(fds)
        }
        switch found {
        case .pending(let domain):
            _ = hypervisor.destroyDomain(domain)
            pools.forget(id)
            removeFromStore(id)
            logger.info("\(id) destroyed by dom0 before its guest joined")
        case .joined(let fds):
            // The loop sees the hang-up and closes the connection (its disconnect
            // destroys the domain); the descriptor stays open until then.
            for fd in fds { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
            logger.info("\(id) destroyed by dom0")
        case .none:
            throw .errno(.noSuchProcess, "destroy domain: no guest domain \(id)")
        }
        return WireMessage([0])
    }

    private func newDomain(frames count: UInt64) throws(HypervisorError) -> SimulatedDomain {
        guard count >= 16, count <= 262_144 else {
            throw .errno(.invalidArgument, "a guest needs 16 to 262144 frames, not \(count)")
        }
        // Its share pools take frame numbers above its memory (`SharePoolRegistry`).
        return try hypervisor.createDomain(frames: Int(count) + SharePoolRegistry.guestRegion)
    }

    /// The join reply: the domain's memory, table and a store connection speaking as it.
    func joinReply(_ conn: Connection, _ domain: SimulatedDomain, frames: Range<Int>, refs: Range<UInt32>)
        throws(HypervisorError) -> (WireMessage, AfterReply)
    {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            if !domain.isPrivileged { _ = hypervisor.destroyDomain(domain) }
            throw .errno(Errno(rawValue: errno), "socketpair for the store connection")
        }
        store.adopt(connectedSocket: pair[0], as: domain.domainID)
        lock.withLock { conn.domain = domain }
        logger.info("\(domain.domainID) joined", metadata: ["frames": "\(frames)", "peer": "\(conn.peer)"])
        let words: [UInt64] = [
            0, UInt64(domain.domainID.rawValue), UInt64(frames.lowerBound), UInt64(frames.count), UInt64(mainFrames(of: domain)),
            UInt64(refs.lowerBound), UInt64(refs.upperBound), UInt64(domain.grantTableSize),
        ]
        return (WireMessage(words, fds: [domain.memoryFileDescriptor.rawValue, domain.grantTableFileDescriptor, pair[1]]),
                AfterReply(fds: [pair[1]]))
    }

    /// A guest's home and, as a toolstack's domain config would, a vif 0 and a
    /// vbd 51712 (xvda) served by dom0.
    private func plug(_ id: DomainID, devices: UInt64, on store: XenStoreClient) async {
        try? await XenbusToolstack.createDomainHome(id, on: store)
        if devices & 1 != 0 { try? await XenbusToolstack.create(XenbusDevice(type: "vif", id: 0, frontend: id), on: store) }
        if devices & 2 != 0 { try? await XenbusToolstack.create(XenbusDevice(type: "vbd", id: 51712, frontend: id), on: store) }
    }

    /// Whether the peer of `fd` is still there (a backend that died has not been reaped yet).
    private static func isAlive(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(0x2000 /* POLLRDHUP */), revents: 0)
        return poll(&p, 1, 0) == 0
    }

    /// A domain's own memory, below its share pools' frames.
    func mainFrames(of domain: SimulatedDomain) -> Int {
        domain.frameCount - (domain.isPrivileged ? SharePoolRegistry.dom0Region(slices: Self.dom0Slices) : SharePoolRegistry.guestRegion)
    }

    private func map(_ m: WireMessage, _ conn: Connection, _ mapper: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count >= 5, m.words.count <= 4 + 256 else { throw .errno(.invalidArgument, "map: malformed") }
        guard mapper.isPrivileged || lock.withLock({ conn.maps.count < policy.maxMappingsPerGuest }) else {
            throw .errno(.noSpace, "map: \(mapper.domainID) holds \(policy.maxMappingsPerGuest) mappings already")
        }
        let granterID = DomainID(UInt16(truncatingIfNeeded: m.words[1]))
        let writable = m.words[2] != 0
        let refs = m.words[4...].map { GrantRef(UInt32(truncatingIfNeeded: $0)) }
        guard let granter = hypervisor.domain(granterID) else { throw .grant(.badDomain, "map: no domain \(granterID)") }
        let limit = mapper.isPrivileged ? Self.dom0PinLimit : Self.guestPinLimit
        try lock.withLock { () throws(HypervisorError) in
            guard conn.pins + refs.count <= limit else {
                throw .grant(.noSpace, "map: \(mapper.domainID) holds \(conn.pins) pins, its limit is \(limit)")
            }
            conn.pins += refs.count
        }
        var frames: [UInt64] = []
        let sent: (pools: [SharePoolRegistry.Pool], fds: [Int32])
        do throws(HypervisorError) {
            for ref in refs { frames.append(try granter.pinGrant(ref, for: mapper.domainID, writable: writable)) }
            // The entries grant these frames to the mapper; the mapper may reach
            // them only through a pool set aside for it, never the granter's memory.
            sent = try pools.poolsForMap(granter: granterID, frames: frames, mapper: mapper.domainID, writable: writable,
                                         limit: Self.poolsPerMap)
        } catch {
            for done in refs[0..<frames.count] { granter.unpinGrant(done, writable: writable) }
            lock.withLock { conn.pins -= refs.count }
            logger.notice("refused map", metadata: ["mapper": "\(mapper.domainID)", "why": "\(error)"])
            throw error
        }
        let handle: UInt32 = lock.withLock {
            let h = nextHandle
            nextHandle &+= 1
            conn.maps[h] = MapRecord(granter: granter, refs: refs, writable: writable)
            return h
        }
        let poolWords: [UInt64] = sent.pools.flatMap { p -> [UInt64] in [p.first, UInt64(SharePoolRegistry.poolFrames)] }
        return (WireMessage([0, UInt64(handle), UInt64(sent.pools.count)] + poolWords + frames, fds: sent.fds),
                AfterReply(fds: sent.fds))
    }

    /// A new share pool of the caller's, for its pages shared with one peer.
    private func sharePool(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 3, m.words[1] <= UInt64(UInt16.max) else { throw .errno(.invalidArgument, "share pool: malformed") }
        let grantee = DomainID(UInt16(m.words[1]))
        let slots: Range<Int>
        if me.isPrivileged {
            guard let slice = lock.withLock({ conn.slice }) else { throw .errno(.invalidArgument, "share pool: no slice") }
            slots = slice * SharePoolRegistry.dom0PoolsPerSlice..<(slice + 1) * SharePoolRegistry.dom0PoolsPerSlice
        } else {
            slots = 0..<SharePoolRegistry.guestPools
        }
        let (pool, fd) = try pools.create(owner: ObjectIdentifier(conn), granter: me.domainID, base: UInt64(mainFrames(of: me)),
                                          slots: slots, grantee: grantee, writable: m.words[2] != 0)
        return (WireMessage([0, pool.first, UInt64(SharePoolRegistry.poolFrames)], fds: [fd]), AfterReply(fds: [fd]))
    }

    private func unmap(_ m: WireMessage, _ conn: Connection) throws(HypervisorError) -> WireMessage {
        guard m.words.count == 2 else { throw .errno(.invalidArgument, "unmap: malformed") }
        let h = UInt32(truncatingIfNeeded: m.words[1])
        guard let record = lock.withLock({ conn.maps.removeValue(forKey: h) }) else {
            throw .grant(.badHandle, "unmap: handle \(h) is not a mapping of this process")
        }
        for ref in record.refs { record.granter.unpinGrant(ref, writable: record.writable) }
        lock.withLock { conn.pins -= record.refs.count }
        return WireMessage([0])
    }

    /// What dom0's grant copy needs of a domain: its grant table, read-only,
    /// and the pools it set aside for dom0 (at most 15: one record's
    /// descriptors). Never its main memory: a guest's private frames are not
    /// dom0's to read in this world either, only what the guest shares.
    private func foreignAccess(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard me.isPrivileged else {
            throw .errno(.notPermitted, "foreign access: only dom0 may copy through another domain's grants")
        }
        guard m.words.count == 2, m.words[1] <= UInt64(UInt16.max), let d = hypervisor.domain(DomainID(UInt16(m.words[1]))) else {
            throw .grant(.badDomain, "foreign access: no such domain")
        }
        // A new read-only open file description: the copier reads entries, only the granter writes them.
        let table = open("/proc/self/fd/\(d.grantTableFileDescriptor)", O_RDONLY | O_CLOEXEC)
        guard table >= 0 else { throw .errno(Errno(rawValue: errno), "foreign access: read-only grant table") }
        let shared: (pools: [SharePoolRegistry.Pool], fds: [Int32])
        do { shared = try pools.poolsShared(by: d.domainID, with: me.domainID, limit: 14) } catch {
            Glibc.close(table)
            throw error
        }
        // The granter's grant-writer bitmap: dom0's copies into its frames mark them for log-dirty.
        let dirty = fcntl(d.grantDirtyBitmapFileDescriptor, F_DUPFD_CLOEXEC, 0)
        guard dirty >= 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(table)
            for fd in shared.fds { Glibc.close(fd) }
            throw .errno(e, "foreign access: dup of the dirty bitmap")
        }
        let poolWords: [UInt64] = shared.pools.flatMap { p -> [UInt64] in
            [p.id, p.first, UInt64(SharePoolRegistry.poolFrames), p.writable ? 1 : 0]
        }
        let fds = [table] + shared.fds + [dirty]
        let words = [0, UInt64(d.grantTableSize), UInt64(shared.pools.count)] + poolWords + [UInt64(d.grantDirtyBitmapBytes)]
        return (WireMessage(words, fds: fds), AfterReply(fds: fds))
    }

    /// Each bound port holds two descriptors here (its page and the binder's
    /// wake pipe): a guest process gets a bounded number.
    private func checkPortCap(_ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) {
        guard me.isPrivileged || lock.withLock({ conn.ports.count < policy.maxPortsPerGuest }) else {
            throw .errno(.noSpace, "bind: \(me.domainID) holds \(policy.maxPortsPerGuest) ports already")
        }
    }

    private func freePort(_ domain: DomainID) -> UInt32? {
        for p in UInt32(1)..<EventPort.twoLevelLimit where ports[PortKey(domain: domain.rawValue, port: p)] == nil { return p }
        return nil
    }

    private func bindUnbound(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 2, m.fds.count == 1 else { throw .errno(.invalidArgument, "bind unbound: malformed") }
        try checkPortCap(conn, me)
        let remote = DomainID(UInt16(truncatingIfNeeded: m.words[1]))
        guard hypervisor.domain(remote) != nil else { throw .errno(.noSuchProcess, "bind unbound: no domain \(remote)") }
        let channel = try Channel(remote: remote)
        let port = try lock.withLock { () throws(HypervisorError) -> UInt32 in
            guard let p = freePort(me.domainID) else { throw .errno(.noSpace, "bind unbound: \(me.domainID) has no free port") }
            ports[PortKey(domain: me.domainID.rawValue, port: p)] =
                PortEntry(channel: channel, end: 0, owner: ObjectIdentifier(conn), wakeFD: m.fds[0])
            conn.ports.insert(p)
            return p
        }
        return (WireMessage([0, UInt64(port)], fds: [channel.fd]), AfterReply(keepRequestFDs: true))
    }

    private func bindInterdomain(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 3, m.fds.count == 1 else { throw .errno(.invalidArgument, "bind interdomain: malformed") }
        try checkPortCap(conn, me)
        let remote = DomainID(UInt16(truncatingIfNeeded: m.words[1]))
        let rp = UInt32(truncatingIfNeeded: m.words[2])
        return try lock.withLock { () throws(HypervisorError) -> (WireMessage, AfterReply) in
            guard let far = ports[PortKey(domain: remote.rawValue, port: rp)], far.end == 0, far.channel.remote == me.domainID,
                far.channel.bound == nil
            else { throw .errno(.invalidArgument, "bind interdomain: \(remote) port \(rp) is not unbound for \(me.domainID)") }
            guard let p = freePort(me.domainID) else { throw .errno(.noSpace, "bind interdomain: no free port") }
            let key = PortKey(domain: me.domainID.rawValue, port: p)
            let channel = far.channel
            ports[key] = PortEntry(channel: channel, end: 1, owner: ObjectIdentifier(conn), wakeFD: m.fds[0])
            conn.ports.insert(p)
            channel.bound = key
            channel.generation = (channel.generation + 1) & 0xFF_FFFF
            // relaxed: published by the releasing state store below.
            channel.page.masked(1).store(0, ordering: .relaxed)
            channel.page.pending(1).store(1, ordering: .relaxed)
            // releasing: the new end's bits are set before either side sees it connected.
            channel.page.state.store(ChannelPage.encode(state: ChannelPage.connected, generation: channel.generation), ordering: .releasing)
            return (WireMessage([0, UInt64(p), UInt64(channel.generation)], fds: [channel.fd, far.wakeFD]),
                    AfterReply(keepRequestFDs: true))
        }
    }

    private func peer(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 2 else { throw .errno(.invalidArgument, "peer: malformed") }
        let key = PortKey(domain: me.domainID.rawValue, port: UInt32(truncatingIfNeeded: m.words[1]))
        return try lock.withLock { () throws(HypervisorError) -> (WireMessage, AfterReply) in
            guard let entry = ports[key], entry.owner == ObjectIdentifier(conn) else {
                throw .errno(.socketNotConnected, "peer: port not bound by this process")
            }
            let otherKey: PortKey?
            if entry.end == 0 {
                otherKey = entry.channel.bound
            } else {
                otherKey = ports.first { $0.value.channel === entry.channel && $0.value.end == 0 }?.key
            }
            guard let otherKey, let other = ports[otherKey] else { throw .errno(.socketNotConnected, "peer: no connected peer") }
            return (WireMessage([0, UInt64(entry.channel.generation)], fds: [other.wakeFD]), AfterReply())
        }
    }

    private func unbind(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> WireMessage {
        guard m.words.count == 2 else { throw .errno(.invalidArgument, "unbind: malformed") }
        let key = PortKey(domain: me.domainID.rawValue, port: UInt32(truncatingIfNeeded: m.words[1]))
        try lock.withLock { () throws(HypervisorError) in
            guard let entry = ports[key], entry.owner == ObjectIdentifier(conn) else {
                throw .errno(.socketNotConnected, "unbind: port not bound by this process")
            }
            closePortLocked(key, entry, conn)
        }
        return WireMessage([0])
    }

    /// Xen's `evtchn_close`. End 0 closing ends the channel (the bound peer's
    /// notify fails from now on); end 1 closing returns the channel to unbound,
    /// so a restarted backend can bind it again. Caller holds `lock`.
    private func closePortLocked(_ key: PortKey, _ entry: PortEntry, _ conn: Connection) {
        ports[key] = nil
        conn.ports.remove(key.port)
        Glibc.close(entry.wakeFD)
        let page = entry.channel.page
        // relaxed for state reads: only the daemon writes it, under `lock`.
        let current = page.state.load(ordering: .relaxed)
        if entry.end == 0 {
            // releasing: orders nothing new; a plain publish of the closed state.
            page.state.store(ChannelPage.encode(state: ChannelPage.closed, generation: current >> 8), ordering: .releasing)
        } else {
            entry.channel.bound = nil
            if current & 0xFF != ChannelPage.closed {
                page.state.store(ChannelPage.encode(state: ChannelPage.unbound, generation: current >> 8), ordering: .releasing)
            }
            // relaxed: nobody reads end 1 until a new binder is published.
            page.pending(1).store(0, ordering: .relaxed)
            page.masked(1).store(0, ordering: .relaxed)
        }
    }

    // MARK: A process goes away

    /// Releases all `conn` holds; with `keepingConnection` (a saved guest's process
    /// parked in its suspend call) its socket stays, domainless, until answered.
    func disconnect(_ conn: Connection, keepingConnection: Bool = false) {
        let (domain, maps, slice) = lock.withLock { () -> (SimulatedDomain?, [MapRecord], Int?) in
            if !keepingConnection { connections[ObjectIdentifier(conn)] = nil }
            for p in conn.ports.sorted() {
                guard let d = conn.domain else { break }
                let key = PortKey(domain: d.domainID.rawValue, port: p)
                if let entry = ports[key] { closePortLocked(key, entry, conn) }
            }
            let maps = Array(conn.maps.values)
            conn.maps = [:]
            if let s = conn.slice { slices[s] = false }
            let domain = conn.domain
            let slice = conn.slice
            if keepingConnection {
                conn.pins = 0
                conn.trackedRanges = 0
                conn.domain = nil
                conn.slice = nil
                conn.parked = domain?.domainID
            }
            return (domain, maps, slice)
        }
        // The process's views died with it; unpin what it held.
        for r in maps { for ref in r.refs { r.granter.unpinGrant(ref, writable: r.writable) } }
        pools.release(owner: ObjectIdentifier(conn))
        abandonImports(of: conn)
        cancelSuspends(claimedBy: conn)
        // Its write tracking goes with it (the domain's teardown below stops a log first).
        let writes = lock.withLock { () -> PageWriteTracker? in
            defer { conn.writes = nil }
            return conn.writes
        }
        defer { writes?.close() }
        guard let domain else { return }
        if domain.isPrivileged {
            if let slice { endGrants(ofSlice: slice) }
            logger.info("a dom0 process left", metadata: ["mappings released": "\(maps.count)"])
            return
        }
        let id = domain.domainID
        let left = hypervisor.destroyDomain(domain)
        pools.forget(id)
        if !left.isEmpty { logger.info("\(id) left behind: \(left)") }
        removeFromStore(id)
        logger.info("\(id) destroyed: its process left")
    }

    /// Ends the grants a dead dom0 process left in its slice of references, unless mapped.
    private func endGrants(ofSlice slice: Int) {
        let dom0 = hypervisor.dom0
        let per = UInt32(dom0.grantTableSize / Self.dom0Slices)
        for r in max(GrantRef.reservedCount, UInt32(slice) * per)..<(UInt32(slice) + 1) * per {
            let header = UnsafeAtomic<UInt32>(
                at: UnsafeMutableRawPointer(dom0.grantEntry(GrantRef(r))).assumingMemoryBound(to: UnsafeAtomic<UInt32>.Storage.self))
            // acquiring/acquiringAndReleasing: as a guest's end-access (grant_table.h).
            let current = header.load(ordering: .acquiring)
            guard current & 0xFFFF != 0, current & UInt32(GTF_reading | GTF_writing) == 0 else { continue }
            _ = header.compareExchange(expected: current, desired: current & 0xFFFF_0000, ordering: .acquiringAndReleasing)
        }
    }

    /// Removes a dead guest's devices (both halves, so backends see them
    /// vanish) and its home from the store. Which devices it had is read from
    /// dom0's backend directory and the toolstack's layout, never from a key
    /// the guest wrote (a guest's `backend` key can name any path, and the
    /// daemon removes with dom0's rights).
    func removeFromStore(_ id: DomainID) {
        toolstackJob { store in
            let backends = "/local/domain/0/backend"
            for type in (try? await store.directory(backends)) ?? [] where Self.isComponent(type) {
                let dir = "\(backends)/\(type)/\(id.rawValue)"
                for dev in (try? await store.directory(dir)) ?? [] where Self.isComponent(dev) {
                    try? await store.transaction { tx in
                        try await tx.rm(XenStorePath.home(of: id) + "/device/\(type)/\(dev)")
                        try await tx.rm("\(dir)/\(dev)")
                    }
                }
                try? await store.rm(dir)
            }
            // The toolstack's `/vm/UUID` (named by `vm`, a key only dom0 can write
            // in the guest's dom0-owned home) goes with the domain, as libxl removes it.
            if let vm = try? await store.read(XenStorePath.home(of: id) + "/vm"), vm.hasPrefix("/vm/"),
                Self.isComponent(String(vm.dropFirst(4)))
            {
                try? await store.rm(vm)
            }
            try? await store.rm(XenStorePath.home(of: id))
        }
        // A backend that was closing the device may write its `state` once more
        // after the removal, recreating the node; sweep the dead domain's
        // backend directories again a moment later, as a toolstack's cleanup does.
        Task { [self] in
            try? await Task.sleep(nanoseconds: 1_000_000_000)
            toolstackJob { [logger] store in
                for type in (try? await store.directory("/local/domain/0/backend")) ?? [] where Self.isComponent(type) {
                    let dir = "/local/domain/0/backend/\(type)/\(id.rawValue)"
                    if (try? await store.exists(dir)) == true, self.hypervisor.domain(id) == nil {
                        try? await store.rm(dir)
                        logger.debug("swept \(dir)")
                    }
                }
                // A backend's published figures for the dead domain's devices go too.
                for type in (try? await store.directory("/local/domain/0/xenpv-stats")) ?? [] where Self.isComponent(type) {
                    let dir = "/local/domain/0/xenpv-stats/\(type)/\(id.rawValue)"
                    if self.hypervisor.domain(id) == nil { try? await store.rm(dir) }
                }
            }
        }
    }

    /// One node name: what a directory listing may hold, never a path.
    private static func isComponent(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && (try? XenStorePath.validate("/" + name)) != nil
    }

    /// Queues store work for the toolstack task (in order, off the loop).
    private func toolstackJob(_ job: @escaping @Sendable (XenStoreClient) async -> Void) {
        guard let store = lock.withLock({ toolstackStore }), let jobs = lock.withLock({ toolstack }) else { return }
        jobs.yield { await job(store) }
    }

    /// Destroys domains whose guest did not come for them in time.
    private func expirePending() {
        let now = cxen_monotonic_ns()
        let expired = lock.withLock { () -> [SimulatedDomain] in
            let gone = pending.filter { $0.value.deadline <= now }
            for key in gone.keys { pending[key] = nil }
            return gone.values.map(\.domain)
        }
        for domain in expired {
            let id = domain.domainID
            _ = hypervisor.destroyDomain(domain)
            pools.forget(id)
            lock.withLock { _ = restoredPools.removeValue(forKey: id) }
            removeFromStore(id)
            logger.info("\(id) destroyed: no guest joined it in time")
        }
    }
}
