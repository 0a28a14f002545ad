import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor
import XenSimulator
import XenSimulatorClient

/// Save, restore and migration across daemons ("hosts").
///
/// As in Xen, the stream is written and read by dom0's toolstack (libxc's save and
/// restore run in dom0's user space, not in the hypervisor): the daemon hands a
/// trusted dom0 process the descriptors of a domain's state (its memory, its grant
/// table and its share pools, read-only) and creates a domain with a chosen id whose
/// state the toolstack fills in. So the daemon never copies a page nor blocks its
/// loop on a scan: every long piece of work runs in the toolstack's process.
///
/// The pause is the guest's: its process calls `suspend` (`DaemonOp.suspend`) once
/// its devices are quiet, and waits. dom0 claims that suspend, copies what is left,
/// and either lets the process go to the destination (it learns the destination's
/// socket and a join token in the answer, and the domain is released here) or
/// cancels (the process goes on here as before).
extension HypervisorDaemon {
    /// The longest a guest may ask to wait suspended, in milliseconds.
    static let maxSuspendMS: UInt64 = 3_600_000

    /// `[suspend, timeout ms]` from a guest process: answered later (see `DaemonOp.suspend`).
    func suspend(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> Outcome {
        guard !me.isPrivileged else { throw .errno(.notPermitted, "suspend: dom0 is not suspended") }
        guard m.words.count == 2, m.words[1] > 0, m.words[1] <= Self.maxSuspendMS else {
            throw .errno(.invalidArgument, "suspend: malformed")
        }
        let deadline = cxen_monotonic_ns() &+ m.words[1] * 1_000_000
        try lock.withLock { () throws(HypervisorError) in
            guard conn.suspend == nil else { throw .errno(.resourceBusy, "suspend: already suspended") }
            conn.suspend = (deadline, false)
        }
        return .later
    }

    /// Answers suspended guests whose deadline passed without dom0 claiming them.
    func expireSuspends(_ poller: inout DaemonPoller) {
        let now = cxen_monotonic_ns()
        let due = lock.withLock { () -> [Connection] in
            connections.values.filter { c in
                guard let s = c.suspend, !s.claimed, s.deadline <= now else { return false }
                c.suspend = nil
                return true
            }
        }
        for conn in due { answerLater(conn, WireMessage([0, 2]), AfterReply()) }
    }

    /// A dom0 process that left in the middle of a save or migration: the guests whose
    /// suspend it claimed go on where they are (a saved, parked one keeps waiting).
    func cancelSuspends(claimedBy conn: Connection) {
        let me = ObjectIdentifier(conn)
        let guests = lock.withLock { () -> [Connection] in
            connections.values.filter { c in
                guard c.claimer == me, c.parked == nil, c.suspend != nil, !c.closed else { return false }
                c.suspend = nil
                c.claimer = nil
                return true
            }
        }
        for g in guests {
            logger.info("a save or migration of \(g.domain?.domainID.description ?? "?") was abandoned; the guest goes on")
            answerLater(g, WireMessage([0, 0]), AfterReply())
        }
    }

    /// The one process of a guest domain (a restored or created guest has exactly one).
    private func guestConnection(_ id: DomainID) -> Connection? {
        lock.withLock { connections.values.first { !$0.closed && $0.domain?.domainID == id && $0.domain?.isPrivileged == false } }
    }

    /// `[transfer, domid, action, …]` from a trusted dom0 process (`DaemonOp.transfer`).
    func transfer(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard me.isPrivileged, conn.trusted else {
            throw .errno(.notPermitted, "save/migrate: only dom0 may take a domain's state")
        }
        guard m.words.count >= 3, m.words[1] > 0, m.words[1] < UInt64(DomainID.firstReserved.rawValue) else {
            throw .errno(.invalidArgument, "transfer: malformed")
        }
        let id = DomainID(UInt16(m.words[1]))
        if m.words[2] == 7 { return try resumeParked(id, m) }
        guard let domain = hypervisor.domain(id), let guest = guestConnection(id) else {
            throw .errno(.noSuchProcess, "save/migrate: no guest domain \(id) with a joined process on this host")
        }
        switch m.words[2] {
        case 1: return try export(domain, guest)
        case 2:
            // And whether its process handed over its write tracking: the last step of a
            // process arriving from another host before its `suspend` returns.
            let (suspended, tracked) = lock.withLock { (guest.suspend != nil, guest.writes != nil) }
            return (WireMessage([0, suspended ? 1 : 0, tracked ? 1 : 0]), AfterReply())
        case 3:
            try lock.withLock { () throws(HypervisorError) in
                guard guest.suspend != nil else { throw .errno(.resourceBusy, "save/migrate: \(id) is not suspended") }
                guard guest.suspend?.claimed == false else { throw .errno(.resourceBusy, "save/migrate: \(id) is being saved already") }
                guest.suspend?.claimed = true
                guest.claimer = ObjectIdentifier(conn)
            }
            return (WireMessage([0]), AfterReply())
        case 4:
            guard m.words.count == 5, !m.text.isEmpty, m.text.utf8.count < 108 else {
                throw .errno(.invalidArgument, "transfer: a resume needs a token and a socket path")
            }
            try takeSuspend(guest, id, claimedBy: conn)
            let reply = WireMessage([0, 1, m.words[3], m.words[4]], text: m.text)
            // Answered; the process closes this link once it has mapped the destination's
            // memory over this host's (which drops this host's write protection of it
            // for free), and that close releases the domain here as any departure does.
            // Closing it from here at once would make the release race the process's
            // remap for its address space. dom0 waits for the domain to be gone.
            answerLater(guest, reply, AfterReply())
            return (WireMessage([0]), AfterReply())
        case 5:
            try takeSuspend(guest, id, claimedBy: conn)
            answerLater(guest, WireMessage([0, 0]), AfterReply())
            return (WireMessage([0]), AfterReply())
        case 6:
            // Saved to a file: the domain goes, its process waits for a restore.
            try lock.withLock { () throws(HypervisorError) in
                guard guest.suspend?.claimed == true, guest.claimer == ObjectIdentifier(conn) else {
                    throw .errno(.resourceBusy, "save: \(id)'s suspend is not claimed by this process")
                }
            }
            disconnect(guest, keepingConnection: true)
            logger.info("\(id) saved and released; its process waits for a restore")
            return (WireMessage([0]), AfterReply())
        default:
            throw .errno(.invalidArgument, "transfer: unknown action \(m.words[2])")
        }
    }

    /// `[transfer, domid, 7, token high, token low]` with the destination's socket:
    /// the parked process of saved domain `id` goes there.
    private func resumeParked(_ id: DomainID, _ m: WireMessage) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard m.words.count == 5, !m.text.isEmpty, m.text.utf8.count < 108 else {
            throw .errno(.invalidArgument, "restore: resuming a parked process needs a token and a socket path")
        }
        guard let guest = lock.withLock({ () -> Connection? in
            let c = connections.values.first { !$0.closed && $0.parked == id }
            c?.parked = nil
            c?.suspend = nil
            return c
        }) else { throw .errno(.noSuchProcess, "restore: no process of saved domain \(id) waits on this host") }
        let reply = WireMessage([0, 1, m.words[3], m.words[4]], text: m.text)
        post { [self] poller in
            let live = lock.withLock { () -> Bool in
                guest.waiting = false
                return !guest.closed
            }
            if live { _ = Wire.send(guest.fd, reply) }
            close(guest, &poller)
        }
        return (WireMessage([0]), AfterReply())
    }

    /// Ends `guest`'s suspend, which `conn` must have claimed (two toolstacks never
    /// both answer one guest).
    private func takeSuspend(_ guest: Connection, _ id: DomainID, claimedBy conn: Connection) throws(HypervisorError) {
        try lock.withLock { () throws(HypervisorError) in
            guard guest.suspend?.claimed == true, guest.claimer == ObjectIdentifier(conn) else {
                throw .errno(.resourceBusy, "save/migrate: \(id)'s suspend is not claimed by this process")
            }
            guest.suspend = nil
            guest.claimer = nil
        }
    }

    /// A domain's state for dom0 to save: `[0, main frames, grant entries, pools,
    /// (first, frames, grantee, writable) per pool]` with its memory, its table and
    /// its pools, each read-only.
    private func export(_ domain: SimulatedDomain, _ guest: Connection) throws(HypervisorError) -> (WireMessage, AfterReply) {
        let memory = open("/proc/self/fd/\(domain.memoryFileDescriptor.rawValue)", O_RDONLY | O_CLOEXEC)
        guard memory >= 0 else { throw .errno(Errno(rawValue: errno), "save: read-only memory descriptor") }
        let table = open("/proc/self/fd/\(domain.grantTableFileDescriptor)", O_RDONLY | O_CLOEXEC)
        guard table >= 0 else {
            let e = Errno(rawValue: errno)
            Glibc.close(memory)
            throw .errno(e, "save: read-only grant table")
        }
        let shared: (pools: [SharePoolRegistry.Pool], fds: [Int32])
        do { shared = try pools.pools(of: domain.domainID, writable: false) } catch {
            Glibc.close(memory)
            Glibc.close(table)
            throw error
        }
        let words: [UInt64] = [0, UInt64(mainFrames(of: domain)), UInt64(domain.grantTableSize), UInt64(shared.pools.count)]
            + shared.pools.flatMap { [$0.first, UInt64(SharePoolRegistry.poolFrames), UInt64($0.grantee.rawValue), $0.writable ? 1 : 0] }
        let fds = [memory, table] + shared.fds
        return (WireMessage(words, fds: fds), AfterReply(fds: fds))
    }

    /// `[importDomain, action, domid, …]` from a trusted dom0 process (`DaemonOp.importDomain`).
    func importDomain(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard me.isPrivileged, conn.trusted else { throw .errno(.notPermitted, "restore: only dom0 may create a domain") }
        guard m.words.count >= 3, m.words[2] > 0, m.words[2] < UInt64(DomainID.firstReserved.rawValue) else {
            throw .errno(.invalidArgument, "restore: malformed")
        }
        let id = DomainID(UInt16(m.words[2]))
        let mine = lock.withLock { conn.imports.contains(id) }
        switch m.words[1] {
        case 1:
            guard m.words.count == 5, m.words[3] >= 16, m.words[3] <= 262_144, m.words[4] == UInt64(SimulatedHypervisor.defaultGrantFrames * 512) else {
                throw .errno(.invalidArgument, "restore: a guest needs 16 to 262144 frames and the default grant table")
            }
            guard lock.withLock({ pending.count < policy.maxPendingDomains }) else {
                throw .errno(.noSpace, "restore: \(policy.maxPendingDomains) domains already wait for their guest")
            }
            let domain = try hypervisor.createDomain(id: id, frames: Int(m.words[3]) + SharePoolRegistry.guestRegion)
            lock.withLock { _ = conn.imports.insert(id) }
            let fds = [fcntl(domain.memoryFileDescriptor.rawValue, F_DUPFD_CLOEXEC, 0), fcntl(domain.grantTableFileDescriptor, F_DUPFD_CLOEXEC, 0)]
            guard fds.allSatisfy({ $0 >= 0 }) else {
                let e = Errno(rawValue: errno)
                for fd in fds where fd >= 0 { Glibc.close(fd) }
                throw .errno(e, "restore: dup")
            }
            logger.info("\(id) being restored", metadata: ["frames": "\(m.words[3])"])
            return (WireMessage([0, UInt64(domain.frameCount), UInt64(domain.grantTableSize)], fds: fds), AfterReply(fds: fds))
        case 2:
            guard mine, let domain = hypervisor.domain(id) else { throw .errno(.noSuchProcess, "restore: \(id) is not being restored by this process") }
            guard m.words.count == 6, m.words[4] < UInt64(DomainID.firstReserved.rawValue) else {
                throw .errno(.invalidArgument, "restore: malformed share pool")
            }
            let (_, fd) = try pools.createAt(owner: ObjectIdentifier(conn), granter: id, base: UInt64(mainFrames(of: domain)),
                                             slots: SharePoolRegistry.guestPools, first: m.words[3],
                                             grantee: DomainID(UInt16(m.words[4])), writable: m.words[5] != 0)
            return (WireMessage([0], fds: [fd]), AfterReply(fds: [fd]))
        case 3:
            guard mine, let domain = hypervisor.domain(id) else { throw .errno(.noSuchProcess, "restore: \(id) is not being restored by this process") }
            let token = DomainToken.random()
            let deadline = cxen_monotonic_ns() &+ UInt64(policy.pendingLifetime * 1e9)
            lock.withLock {
                conn.imports.remove(id)
                pending[token] = PendingDomain(domain: domain, deadline: deadline)
                // Held by the domain itself until its process adopts them: this dom0 process may leave first.
                restoredPools[id] = ObjectIdentifier(domain)
            }
            pools.reassign(granter: id, from: ObjectIdentifier(conn), to: ObjectIdentifier(domain))
            logger.info("\(id) restored, waiting for its process")
            return (WireMessage([0, token.high, token.low]), AfterReply())
        case 0:
            guard mine, let domain = hypervisor.domain(id) else { throw .errno(.noSuchProcess, "restore: \(id) is not being restored by this process") }
            lock.withLock { _ = conn.imports.remove(id) }
            dropImport(domain)
            return (WireMessage([0]), AfterReply())
        default:
            throw .errno(.invalidArgument, "restore: unknown action \(m.words[1])")
        }
    }

    private func dropImport(_ domain: SimulatedDomain) {
        let id = domain.domainID
        _ = hypervisor.destroyDomain(domain)
        pools.forget(id)
        removeFromStore(id)
        logger.info("\(id) restore abandoned")
    }

    /// A dom0 process that left in the middle of restores: those domains go.
    func abandonImports(of conn: Connection) {
        let ids = lock.withLock { () -> Set<DomainID> in
            defer { conn.imports = [] }
            return conn.imports
        }
        for id in ids { if let d = hypervisor.domain(id) { dropImport(d) } }
    }

    /// `[adoptPools]` from the process of a restored domain: its pools, read-write,
    /// `[0, count, (first, frames, grantee, writable) per pool]`, now held by it.
    func adoptPools(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> (WireMessage, AfterReply) {
        guard !me.isPrivileged, m.words.count == 1 else { throw .errno(.invalidArgument, "adopt pools: malformed") }
        guard let from = lock.withLock({ restoredPools.removeValue(forKey: me.domainID) }) else {
            return (WireMessage([0, 0]), AfterReply())
        }
        pools.reassign(granter: me.domainID, from: from, to: ObjectIdentifier(conn))
        let shared = try pools.pools(of: me.domainID, writable: true)
        let words: [UInt64] = [0, UInt64(shared.pools.count)]
            + shared.pools.flatMap { [$0.first, UInt64(SharePoolRegistry.poolFrames), UInt64($0.grantee.rawValue), $0.writable ? 1 : 0] }
        return (WireMessage(words, fds: shared.fds), AfterReply(fds: shared.fds))
    }
}
