import Atomics
import CXen
import Foundation
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// The guest's half of save, restore and migration across daemons.
///
/// `suspend` asks the daemon and waits, holding the link (other threads' requests
/// wait too). dom0 answers through the daemon: cancelled (nothing changed), or
/// resumed on another host, with that host's socket and a join token. The process
/// then joins the destination's daemon as the restored domain, maps the
/// destination's copies of its memory, grant table and share pools over the old
/// ones at the same addresses, moves its store connection (watches set again) and
/// its daemon link, hands its write tracking to the destination, and starts a new
/// epoch: ports, grant maps and grant references of before are gone, and releasing
/// one is a harmless no-op. The source daemon closing the old link is expected
/// here and does not run `onDaemonLost`. The old link stays open (the source keeps
/// the domain) and the old mappings stay until `resumeSettled()` (or 2 s): on one
/// machine the source's release would take CPU from the resumed guest's handshakes.
/// The program's own process stays where it runs: only the domain it belongs to moved.
extension RemoteHypervisor: DomainSuspending {
    /// Suspends this guest domain until dom0 saved it elsewhere or cancelled (see
    /// `DomainSuspending`). Throws `EINVAL` for dom0, `ETIMEDOUT` when nobody took the
    /// suspend within `timeout` (the domain goes on, as after a cancel), and `.closed`
    /// when the daemon went away meanwhile.
    public func suspend(timeout: Duration) throws(HypervisorError) -> SuspendOutcome {
        guard !isPrivileged else { throw .errno(.invalidArgument, "suspend: dom0 is never suspended") }
        let ms = max(1, min(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000, 3_600_000))
        link.callLock.lock()
        defer { link.callLock.unlock() }
        link.expectClose()
        let reply: WireMessage
        do throws(HypervisorError) {
            // The daemon answers by the deadline itself; the margin covers a claimed
            // suspend's final copy, which dom0 must finish or cancel.
            reply = try link.callLocked(WireMessage([DaemonOp.suspend.rawValue, UInt64(ms)]), timeoutMS: -1)
        } catch {
            if link.endExpectingClose() { link.reportLoss() }
            throw error
        }
        guard reply.words.count >= 2 else {
            for fd in reply.fds { Glibc.close(fd) }
            link.endExpectingClose()
            throw HypervisorError(.closed, "malformed suspend answer")
        }
        if reply.words[1] == 0 || reply.words[1] == 2 {
            if link.endExpectingClose() { link.reportLoss() }
            if reply.words[1] == 2 { throw .errno(.timedOut, "suspend: no toolstack took it within \(ms) ms") }
            return .cancelled
        }
        guard reply.words.count == 4, !reply.text.isEmpty else {
            link.endExpectingClose()
            throw HypervisorError(.closed, "malformed resume answer")
        }
        do throws(HypervisorError) {
            try resume(at: reply.text, token: DomainToken(high: reply.words[2], low: reply.words[3]))
        } catch {
            // The domain left the source and did not arrive: nothing to go on with.
            link.endExpectingClose()
            link.reportLoss()
            throw error
        }
        link.endExpectingClose()
        return .resumed
    }

    /// Closes the link to the old host (which then releases the domain) and starts
    /// unmapping the old host's memory: the last resume put both off until the guest's
    /// devices are connected again (or 2 s have passed).
    public func resumeSettled() { memory.settle() }

    /// Joins the destination as the restored domain and moves everything there. The
    /// caller holds the link's lock.
    private func resume(at socketPath: String, token: DomainToken) throws(HypervisorError) {
        let t0 = cxen_monotonic_ns()
        let tracing = getenv("XENPV_MIGRATION_TRACE") != nil
        func mark(_ what: String) {
            if tracing { FileHandle.standardError.write(Data("resume \(what): \(Double(cxen_monotonic_ns() - t0) / 1e6) ms\n".utf8)) }
        }
        // Started first: the reader thread is polling by the time the moves need it.
        let remapEvents = memory.movingTrackedRanges()
        defer { remapEvents?.finish() }
        let dest = try DaemonLink(socketPath: socketPath)
        let reply = try dest.call(WireMessage([DaemonOp.join.rawValue, 2, token.high, token.low]))
        defer { for fd in reply.fds { Glibc.close(fd) } }
        let w = reply.words
        guard w.count >= 8, reply.fds.count == 3, Self.joinReplyFits(w), w[1] == UInt64(domainID.rawValue),
            w[4] == UInt64(memory.totalFrames), w[2] == UInt64(memory.frames.lowerBound), w[3] == UInt64(memory.frames.count),
            w[7] == UInt64(memory.tableEntries)
        else { throw HypervisorError(.closed, "the destination's domain does not match this one") }
        mark("joined")
        let adopted = try dest.call(WireMessage([DaemonOp.adoptPools.rawValue]))
        defer { for fd in adopted.fds { Glibc.close(fd) } }
        let a = adopted.words
        guard a.count >= 2, a[1] <= 16, a.count == 2 + 4 * Int(a[1]), adopted.fds.count == Int(a[1]) else {
            throw HypervisorError(.closed, "malformed adopt-pools reply")
        }
        var pools: [(first: UInt64, count: Int, fd: Int32)] = []
        for i in 0..<Int(a[1]) {
            guard a[3 + 4 * i] <= 1 << 20 else { throw HypervisorError(.closed, "malformed adopt-pools reply") }
            pools.append((a[2 + 4 * i], Int(a[3 + 4 * i]), adopted.fds[i]))
        }
        mark("adopted")
        try memory.move(memoryFD: reply.fds[0], tableFD: reply.fds[1])
        mark("memory moved")
        try self.pools.move(to: pools)
        mark("pools moved")
        memory.forgetGrants()
        // The store's socket is the destination's now (the reply's descriptor is kept).
        let storeFD = fcntl(reply.fds[2], F_DUPFD_CLOEXEC, 0)
        guard storeFD >= 0 else { throw .errno(Errno(rawValue: errno), "dup of the destination's store connection") }
        storeTransport.move(to: storeFD)
        mark("store moved")
        handOverWriteTracking(through: dest)
        mark("tracking handed over")
        self.pools.trackAll(through: dest)
        mark("pools tracked")
        lock.withLock { foreign = [:] }
        // relaxed: read by release paths that only compare it.
        epoch.wrappingIncrement(ordering: .relaxed)
        // The old host releases the domain when this link closes; its work then (its
        // store, its backends letting go) waits for the devices here too.
        link.move(to: dest) { memory.closeLater($0) }
        memory.dropMovedAside()
    }
}
