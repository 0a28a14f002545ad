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
import XenStore

/// The hypervisor daemon (`xenpv hypervisor --socket PATH`): one simulated
/// machine shared by several processes.
///
/// It owns a `SimulatedHypervisor` (domains' memory, grant tables) and, as
/// dom0's toolstack would, a `XenStoreServer`. A process joins over a Unix
/// seqpacket socket as dom0 or as a new guest; its hypercalls are messages on
/// that socket (`DaemonOp`), its memory, grant table, channel pages and store
/// connection arrive as descriptors.
///
/// Where trust lies:
/// - The daemon is the hypervisor: it checks every map against the granter's
///   table (the in-process checks and statuses), and hands a domain's memory
///   descriptor to another process only with a verified grant, or to dom0,
///   which is privileged as in Xen (grant copy needs it).
/// - A guest receives its own memory and table, the pages of channels it is an
///   end of, and the write ends of its peers' wake pipes, nothing else.
/// - Each process is a domain: when its socket closes (exit or crash) the
///   daemon unpins its mappings, closes its ports (peers see `ENOTCONN`), and
///   for a guest destroys the domain and removes its devices from the store, so
///   backends see them vanish. A dom0 process's grants are ended if unmapped.
///
/// Its toolstack work (a guest's home and devices in the store) runs as Swift
/// tasks awaited from the connection's thread for at most 5 s: run the daemon
/// where nothing blocks the cooperative pool (its own process, as `xenpv
/// hypervisor` does).
public final class HypervisorDaemon: @unchecked Sendable {
    // @unchecked: the tables below are guarded by `lock`; each connection's
    // socket is read by its own thread.
    public let socketPath: String
    /// The store's own dom0 socket (`SOCKET.xenstore`), for tools.
    public var storeSocketPath: String { socketPath + ".xenstore" }
    public let hypervisor: SimulatedHypervisor
    public let store: XenStoreServer
    private let logger: Logger
    private let lock = Lock()
    private var listenFD: Int32 = -1
    private var stopPipe: WakePipe?
    private var acceptThread: Thread?
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var ports: [PortKey: PortEntry] = [:]
    private var nextHandle: UInt32 = 1
    /// Hypercall messages handled since start: the data path must not add to it.
    private var calls: UInt64 = 0
    private var slices: [Bool]
    private var stopped = false
    private var toolstackStore: XenStoreClient?

    /// dom0 frames and grant references are cut into this many slices, one per dom0 process.
    static let dom0Slices = 8
    static let sliceFrames = 1024

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
            let fd = cxen_memfd_create("xenpv-evtchn", 0)
            guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "memfd for a channel page") }
            guard ftruncate(fd, off_t(XenPage.size)) == 0 else {
                Glibc.close(fd)
                throw .errno(Errno(rawValue: errno), "ftruncate a channel page")
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

    final class Connection: @unchecked Sendable {
        // @unchecked: fields are guarded by the daemon's lock.
        let fd: Int32
        var domain: SimulatedDomain?
        var slice: Int?
        var maps: [UInt32: MapRecord] = [:]
        var ports: Set<UInt32> = []
        var memoryGiven: Set<DomainID> = []
        init(fd: Int32) { self.fd = fd }
    }

    /// A daemon that will listen on `socketPath`; `dom0Frames` frames for dom0.
    public init(socketPath: String, logger: Logger = Logger(label: "xenpv-hypervisor")) {
        self.socketPath = socketPath
        self.logger = logger
        hypervisor = SimulatedHypervisor(dom0Frames: Self.dom0Slices * Self.sliceFrames)
        store = XenStoreServer(socketPath: socketPath + ".xenstore", logger: logger)
        slices = Array(repeating: false, count: Self.dom0Slices)
    }

    deinit { stop() }

    /// Binds the socket and starts accepting processes.
    public func start() throws(HypervisorError) {
        do { try store.start() } catch { throw .errno(.addressInUse, "starting the store: \(error)") }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else {
            store.stop()
            throw .errno(Errno(rawValue: errno), "socketpair for the toolstack's store connection")
        }
        store.adopt(connectedSocket: pair[0], as: .dom0)
        toolstackStore = XenStoreClient(transport: XenStoreSocketTransport(connectedSocket: pair[1]))

        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "socket") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        guard socketPath.utf8.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            Glibc.close(fd)
            throw .errno(.fileNameTooLong, "socket path \(socketPath) is too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
        unlink(socketPath)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, listen(fd, 64) == 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(fd)
            store.stop()
            throw .errno(e, "listening on \(socketPath)")
        }
        listenFD = fd
        guard let stop = WakePipe.make() else { throw .errno(Errno(rawValue: errno), "pipe") }
        stopPipe = stop
        let t = Thread { [self] in acceptLoop(stop: stop.read) }
        t.name = "xenpv-hypervisor-accept"
        acceptThread = t
        t.start()
        logger.info("hypervisor daemon listening", metadata: ["socket": "\(socketPath)"])
    }

    /// Disconnects every process (each exits: its hypervisor is gone), stops the store.
    public func stop() {
        let (conns, first) = lock.withLock { () -> ([Connection], Bool) in
            defer { stopped = true }
            return (Array(connections.values), !stopped)
        }
        guard first else { return }
        if let stop = stopPipe { WakePipe.wake(stop.write) }
        for c in conns { _ = shutdown(c.fd, Int32(SHUT_RDWR)) }
        if listenFD >= 0 {
            unlink(socketPath)
        }
        toolstackStore?.close()
        store.stop()
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

    // MARK: Accepting and serving

    private func acceptLoop(stop: Int32) {
        var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, -1)
            if n < 0 { if errno == EINTR { continue } else { break } }
            if fds[1].revents != 0 { break }
            let c = accept(listenFD, nil, nil)
            if c < 0 { continue }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            let conn = Connection(fd: c)
            let accepted = lock.withLock { () -> Bool in
                guard !stopped else { return false }
                connections[ObjectIdentifier(conn)] = conn
                return true
            }
            guard accepted else { Glibc.close(c); break }
            let t = Thread { [self] in serve(conn) }
            t.name = "xenpv-hypervisor-conn"
            t.start()
        }
        Glibc.close(listenFD)
    }

    private func serve(_ conn: Connection) {
        while let request = Wire.receive(conn.fd) {
            let (reply, closeAfter) = handle(request, from: conn)
            for fd in request.fds where !closeAfter.keepRequestFDs { Glibc.close(fd) }
            let sent = Wire.send(conn.fd, reply)
            for fd in closeAfter.fds { Glibc.close(fd) }
            if !sent { break }
        }
        disconnect(conn)
        Glibc.close(conn.fd)
    }

    struct AfterReply {
        var fds: [Int32] = []
        var keepRequestFDs = false
    }

    private func handle(_ m: WireMessage, from conn: Connection) -> (WireMessage, AfterReply) {
        lock.withLock { calls &+= 1 }
        guard let opWord = m.words.first, let op = DaemonOp(rawValue: opWord) else {
            return (.failure(.errno(.invalidArgument, "unknown hypercall")), AfterReply())
        }
        do throws(HypervisorError) {
            if op == .join { return try join(m, conn) }
            guard let domain = lock.withLock({ conn.domain }) else { throw .errno(.invalidArgument, "join first") }
            switch op {
            case .join: fatalError("handled above")
            case .map: return (try map(m, conn, domain), AfterReply())
            case .unmap: return (try unmap(m, conn), AfterReply())
            case .foreignAccess: return try foreignAccess(m, conn, domain)
            case .bindUnbound: return try bindUnbound(m, conn, domain)
            case .bindInterdomain: return try bindInterdomain(m, conn, domain)
            case .peer: return try peer(m, conn, domain)
            case .unbind: return (try unbind(m, conn, domain), AfterReply())
            case .report:
                guard domain.isPrivileged else { throw .errno(.notPermitted, "report: only dom0 may ask") }
                return (WireMessage(lock.withLock { reportWords() }), AfterReply())
            }
        } catch {
            return (.failure(error), AfterReply())
        }
    }

    // MARK: Operations

    private func join(_ m: WireMessage, _ conn: Connection) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard lock.withLock({ conn.domain == nil }) else { throw .errno(.invalidArgument, "already joined") }
        guard m.words.count >= 3 else { throw .errno(.invalidArgument, "join: malformed") }
        let domain: SimulatedDomain
        var frames: Range<Int>
        var refs: Range<UInt32>
        let entries = UInt32(hypervisor.dom0.grantTableSize)
        if m.words[1] == 0 {
            domain = hypervisor.dom0
            let slice = try lock.withLock { () throws(HypervisorError) -> Int in
                guard let s = slices.firstIndex(of: false) else { throw .errno(.tooManyUsers, "too many dom0 processes") }
                slices[s] = true
                conn.slice = s
                return s
            }
            frames = slice * Self.sliceFrames..<(slice + 1) * Self.sliceFrames
            let per = entries / UInt32(Self.dom0Slices)
            refs = max(GrantRef.reservedCount, UInt32(slice) * per)..<(UInt32(slice) + 1) * per
        } else {
            let count = m.words[2]
            guard count >= 16, count <= 262_144 else {
                throw .errno(.invalidArgument, "a guest needs 16 to 262144 frames, not \(count)")
            }
            domain = try hypervisor.createDomain(frames: Int(count))
            frames = 0..<Int(count)
            refs = GrantRef.reservedCount..<UInt32(domain.grantTableSize)
            if let store = toolstackStore {
                let id = domain.domainID
                let devices = m.words.count > 3 ? m.words[3] : 0
                blocking {
                    try? await XenbusToolstack.createDomainHome(id, on: store)
                    // As a toolstack's domain config would: a vif 0 and a vbd 51712 (xvda) served by dom0.
                    if devices & 1 != 0 { try? await XenbusToolstack.create(XenbusDevice(type: "vif", id: 0, frontend: id), on: store) }
                    if devices & 2 != 0 { try? await XenbusToolstack.create(XenbusDevice(type: "vbd", id: 51712, frontend: id), on: store) }
                }
            }
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw .errno(Errno(rawValue: errno), "socketpair for the store connection")
        }
        store.adopt(connectedSocket: pair[0], as: domain.domainID)
        lock.withLock { conn.domain = domain }
        logger.info("\(domain.domainID) joined", metadata: ["frames": "\(frames)"])
        let words: [UInt64] = [
            0, UInt64(domain.domainID.rawValue), UInt64(frames.lowerBound), UInt64(frames.count), UInt64(domain.frameCount),
            UInt64(refs.lowerBound), UInt64(refs.upperBound), UInt64(domain.grantTableSize),
        ]
        return (WireMessage(words, fds: [domain.memoryFileDescriptor.rawValue, domain.grantTableFileDescriptor, pair[1]]),
                AfterReply(fds: [pair[1]]))
    }

    private func map(_ m: WireMessage, _ conn: Connection, _ mapper: SimulatedDomain) throws(HypervisorError) -> WireMessage {
        guard m.words.count >= 5, m.words.count <= 4 + 256 else { throw .errno(.invalidArgument, "map: malformed") }
        let granterID = DomainID(UInt16(truncatingIfNeeded: m.words[1]))
        let writable = m.words[2] != 0
        let wantsMemory = m.words[3] == 0
        let refs = m.words[4...].map { GrantRef(UInt32(truncatingIfNeeded: $0)) }
        guard let granter = hypervisor.domain(granterID) else { throw .grant(.badDomain, "map: no domain \(granterID)") }
        var frames: [UInt64] = []
        for ref in refs {
            do {
                frames.append(try granter.pinGrant(ref, for: mapper.domainID, writable: writable))
            } catch {
                for done in refs[0..<frames.count] { granter.unpinGrant(done, writable: writable) }
                logger.notice("refused map", metadata: ["mapper": "\(mapper.domainID)", "why": "\(error)"])
                throw error
            }
        }
        // Verified: every entry grants these frames to the mapper's domain.
        let handle: UInt32 = lock.withLock {
            let h = nextHandle
            nextHandle &+= 1
            conn.maps[h] = MapRecord(granter: granter, refs: refs, writable: writable)
            if wantsMemory { conn.memoryGiven.insert(granterID) }
            return h
        }
        return WireMessage([0, UInt64(handle)] + frames, fds: wantsMemory ? [granter.memoryFileDescriptor.rawValue] : [])
    }

    private func unmap(_ m: WireMessage, _ conn: Connection) throws(HypervisorError) -> WireMessage {
        guard m.words.count == 2 else { throw .errno(.invalidArgument, "unmap: malformed") }
        let h = UInt32(truncatingIfNeeded: m.words[1])
        guard let record = lock.withLock({ conn.maps.removeValue(forKey: h) }) else {
            throw .grant(.badHandle, "unmap: handle \(h) is not a mapping of this process")
        }
        for ref in record.refs { record.granter.unpinGrant(ref, writable: record.writable) }
        return WireMessage([0])
    }

    private func foreignAccess(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard me.isPrivileged else {
            throw .errno(.notPermitted, "foreign access: only dom0 may map another domain's memory")
        }
        guard m.words.count == 2, let d = hypervisor.domain(DomainID(UInt16(truncatingIfNeeded: m.words[1]))) else {
            throw .grant(.badDomain, "foreign access: no such domain")
        }
        return (WireMessage([0, UInt64(d.frameCount), UInt64(d.grantTableSize)],
                            fds: [d.memoryFileDescriptor.rawValue, d.grantTableFileDescriptor]), AfterReply())
    }

    private func freePort(_ domain: DomainID) -> UInt32? {
        for p in UInt32(1)..<EventPort.twoLevelLimit where ports[PortKey(domain: domain.rawValue, port: p)] == nil { return p }
        return nil
    }

    private func bindUnbound(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 2, m.fds.count == 1 else { throw .errno(.invalidArgument, "bind unbound: malformed") }
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

    private func disconnect(_ conn: Connection) {
        let (domain, maps, slice) = lock.withLock { () -> (SimulatedDomain?, [MapRecord], Int?) in
            connections[ObjectIdentifier(conn)] = nil
            for p in conn.ports.sorted() {
                guard let d = conn.domain else { break }
                let key = PortKey(domain: d.domainID.rawValue, port: p)
                if let entry = ports[key] { closePortLocked(key, entry, conn) }
            }
            let maps = Array(conn.maps.values)
            conn.maps = [:]
            if let s = conn.slice { slices[s] = false }
            return (conn.domain, maps, conn.slice)
        }
        // The process's views died with it; unpin what it held.
        for r in maps { for ref in r.refs { r.granter.unpinGrant(ref, writable: r.writable) } }
        guard let domain else { return }
        if domain.isPrivileged {
            if let slice { endGrants(ofSlice: slice) }
            logger.info("a dom0 process left", metadata: ["mappings released": "\(maps.count)"])
            return
        }
        let id = domain.domainID
        let left = hypervisor.destroyDomain(domain)
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
    /// vanish) and its home from the store.
    private func removeFromStore(_ id: DomainID) {
        guard let store = toolstackStore else { return }
        blocking {
            let home = XenStorePath.home(of: id)
            for type in (try? await store.directory(home + "/device")) ?? [] {
                for dev in (try? await store.directory(home + "/device/" + type)) ?? [] {
                    let fe = home + "/device/\(type)/\(dev)"
                    // The guest owns `backend` and could point it at any node; remove only
                    // its own device's backend directory, in the toolstack's layout.
                    var be: String?
                    if let devID = try? XenstoreValue.decimal(dev, key: fe, in: UInt32.min...UInt32.max),
                       let text = try? await store.readIfPresent(fe + "/" + XenbusKey.backend) {
                        do {
                            be = try XenstoreValue.backendPath(text, key: fe + "/" + XenbusKey.backend,
                                                               of: XenbusDevice(type: type, id: devID, frontend: id)).backendPath
                        } catch { self.logger.warning("not removing the backend of \(fe): \(error)") }
                    }
                    try? await store.transaction { tx in
                        try await tx.rm(fe)
                        if let be { try await tx.rm(be) }
                    }
                }
            }
            try? await store.rm(home)
        }
        // A backend that was closing the device may write its `state` once more
        // after the removal, recreating the node; sweep the dead domain's
        // backend directories again a moment later, as a toolstack's cleanup does.
        Task { [logger] in
            try? await Task.sleep(nanoseconds: 1_000_000_000)
            for type in (try? await store.directory("/local/domain/0/backend")) ?? [] {
                let dir = "/local/domain/0/backend/\(type)/\(id.rawValue)"
                if (try? await store.exists(dir)) == true {
                    try? await store.rm(dir)
                    logger.debug("swept \(dir)")
                }
            }
        }
    }

    /// Runs async store work from a daemon thread, waiting at most 5 s.
    private func blocking(_ body: @escaping @Sendable () async -> Void) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await body()
            done.signal()
        }
        if done.wait(timeout: .now() + 5) == .timedOut { logger.warning("store update did not finish in 5 s") }
    }
}
