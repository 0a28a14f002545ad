import CXen
import Foundation
import Glibc
import XenLocks
import SystemPackage
import XenABI
import XenHypervisor
import XenSimulator
import XenSimulatorClient

/// Log-dirty across processes: the daemon holds each domain's log (its
/// `SimulatedDomain`'s) and the guest processes' write tracking; dom0 starts,
/// reads and stops it (`DaemonOp.logDirty`).
///
/// A read-and-clear runs on a thread of its own and is answered from the loop
/// when done: a `PAGEMAP_SCAN` of a guest's memory takes milliseconds (the
/// guest's page tables, under its mm's lock), and other processes' requests must
/// not wait for it. Start and stop (arming and disarming the trackers) stay on
/// the loop.
extension HypervisorDaemon {
    /// Ranges a guest process may add after its memory: one per share pool, and a few more.
    static let trackedRangeLimit = SharePoolRegistry.guestPools + 4

    /// `[trackWrites, address, first, frames]` from a guest process, with its
    /// userfaultfd and pagemap the first time (the range of its memory), without
    /// them for a share pool it mapped. The addresses are the guest's own: a guest
    /// lying about them harms only its own log.
    func trackWrites(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> Outcome {
        guard !me.isPrivileged else { throw .errno(.notPermitted, "track writes: dom0's memory is not logged") }
        guard m.words.count == 4, m.fds.count == 0 || m.fds.count == 2 else { throw .errno(.invalidArgument, "track writes: malformed") }
        let (address, first, count) = (m.words[1], m.words[2], m.words[3])
        guard count > 0, first < UInt64(me.frameCount), count <= UInt64(me.frameCount) - first else {
            throw .errno(.invalidArgument, "track writes: frames \(first)+\(count) are not \(me.domainID)'s")
        }
        if m.fds.count == 2 {
            let adopted = lock.withLock { () -> PageWriteTracker? in
                guard conn.writes == nil else { return nil }
                conn.writes = PageWriteTracker(userfaultfd: m.fds[0], pagemap: m.fds[1])
                return conn.writes
            }
            guard let tracker = adopted else { throw .errno(.invalidArgument, "track writes: handed over already") }
            // The tracker owns the descriptors now, whatever happens next.
            do throws(HypervisorError) {
                try tracker.track(address: address, first: FrameNumber(first), count: Int(count))
                try me.addDirtyTracker(tracker)
            } catch {
                return .reply(.failure(error), AfterReply(keepRequestFDs: true))
            }
            return .reply(WireMessage([0]), AfterReply(keepRequestFDs: true))
        }
        let tracker = try lock.withLock { () throws(HypervisorError) -> PageWriteTracker in
            guard let t = conn.writes else { throw .errno(.invalidArgument, "track writes: no write tracking handed over") }
            guard conn.trackedRanges < Self.trackedRangeLimit else {
                throw .errno(.noSpace, "track writes: \(me.domainID) tracks \(Self.trackedRangeLimit) ranges already")
            }
            conn.trackedRanges += 1
            return t
        }
        try tracker.track(address: address, first: FrameNumber(first), count: Int(count))
        return .reply(WireMessage([0]), AfterReply())
    }

    /// `[logDirty, domid, action]` from a trusted dom0 process: 1 starts logging a
    /// guest domain (`EOPNOTSUPP` if its process handed over no write tracking), 2
    /// reads and clears its bitmap (answered with its few nonzero words in the reply,
    /// `[0, frames, n, index, word, …]`, else with all of them in a memfd,
    /// `[0, frames, words]`), 0 stops.
    func logDirty(_ m: WireMessage, _ conn: Connection, _ me: SimulatedDomain) throws(HypervisorError) -> Outcome {
        guard me.isPrivileged, conn.trusted else { throw .errno(.notPermitted, "log-dirty: only dom0 may") }
        guard m.words.count == 3, m.words[1] > 0, m.words[1] < UInt64(DomainID.firstReserved.rawValue) else {
            throw .errno(.invalidArgument, "log-dirty: malformed")
        }
        let id = DomainID(UInt16(m.words[1]))
        guard let domain = hypervisor.domain(id) else { throw .errno(.noSuchProcess, "log-dirty: no guest domain \(id)") }
        switch m.words[2] {
        case 1:
            let (trackers, untracked) = lock.withLock { () -> ([PageWriteTracker], Int) in
                let mine = connections.values.filter { !$0.closed && $0.domain === domain }
                return (mine.compactMap(\.writes), mine.count { $0.writes == nil })
            }
            guard untracked == 0 else {
                throw .errno(.notSupported, "log-dirty: the process of \(id) handed over no write tracking (no userfaultfd write-protect)")
            }
            try domain.startDirtyLog(trackers: trackers)
            return .reply(WireMessage([0]), AfterReply())
        case 2:
            // Never on the loop thread: a scan of a large guest takes milliseconds.
            startDetachedThread(named: "xenpv-log-dirty") { [self] in
                do throws(HypervisorError) {
                    let bitmap = try domain.readAndClearDirty()
                    if let inline = Self.inlineReply(bitmap) {
                        answerLater(conn, inline, AfterReply())
                        return
                    }
                    let fd = try Self.bitmapFile(bitmap)
                    answerLater(conn, WireMessage([0, UInt64(bitmap.frameCount), UInt64(bitmap.words.count)], fds: [fd]), AfterReply(fds: [fd]))
                } catch {
                    answerLater(conn, .failure(error), AfterReply())
                }
            }
            return .later
        case 0:
            try domain.stopDirtyLog()
            return .reply(WireMessage([0]), AfterReply())
        default:
            throw .errno(.invalidArgument, "log-dirty: unknown action \(m.words[2])")
        }
    }

    /// Nonzero words a reply carries itself, beyond which they go in a memfd: the last
    /// read of a migration, in the guest's pause, is usually a few dozen pages, and a
    /// memfd costs its creation, a write, the descriptor's passing and a read.
    static let inlineWords = 256

    /// `[0, frames, n, index, word, …]` for a bitmap of at most ``inlineWords`` nonzero
    /// words, else nil.
    static func inlineReply(_ bitmap: DirtyBitmap) -> WireMessage? {
        var words: [UInt64] = [0, UInt64(bitmap.frameCount), 0]
        for (i, w) in bitmap.words.enumerated() where w != 0 {
            guard words.count < 3 + 2 * inlineWords else { return nil }
            words += [UInt64(i), w]
        }
        words[2] = UInt64((words.count - 3) / 2)
        return WireMessage(words)
    }

    /// The bitmap's words, little-endian, in a new memfd (a 256 MiB guest's is 8 KiB
    /// and more, past one record).
    private static func bitmapFile(_ bitmap: DirtyBitmap) throws(HypervisorError) -> Int32 {
        let fd = cxen_memfd_create("xenpv-dirty-bitmap", 1)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "log-dirty: memfd") }
        let words = bitmap.words.map(\.littleEndian)
        let bytes = words.count * 8
        let wrote = words.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes, 0) }
        guard wrote == bytes else {
            let e = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .errno(e, "log-dirty: writing the bitmap")
        }
        return fd
    }
}
