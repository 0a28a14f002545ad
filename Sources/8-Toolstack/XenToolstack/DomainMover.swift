import CXen
import Foundation
import Glibc
import XenABI
import XenHypervisor
import XenLocks
import XenSimulatorClient
import XenStore

/// `xenpv save`, `restore` and `migrate`: the toolstack's side of moving a domain
/// between hosts (hypervisor daemons), on top of ``DomainStreamWriter`` and
/// ``DomainStreamReader``.
///
/// Each of them is a run of blocking calls (daemon round trips, the stream's reads and
/// writes, polls) between the store's awaits, and runs on a thread of its own
/// (`onOwnExecutor`), never holding one of the cooperative pool's.
public enum DomainMover {
    /// What a migration did, for the command's report and the benchmark.
    public struct Figures: Sendable, CustomStringConvertible {
        /// Pages sent in each round; the last is the stop-and-copy round.
        public var pagesPerRound: [Int] = []
        /// Bytes of stream written.
        public var bytes = 0
        /// From the start to the source letting go, in seconds.
        public var totalSeconds = 0.0
        /// From the guest's pause (its suspend seen) to its process joined on the destination, in seconds.
        public var downtimeSeconds = 0.0

        /// One line per figure.
        public var description: String {
            """
            rounds: \(pagesPerRound.count) (pages per round: \(pagesPerRound.map(String.init).joined(separator: " ")))
            stream: \(bytes) bytes
            total: \(String(format: "%.1f", totalSeconds * 1000)) ms
            downtime: \(String(format: "%.2f", downtimeSeconds * 1000)) ms
            """
        }
    }

    /// When pre-copy stops and the guest is paused.
    public struct Budget: Sendable {
        /// Pre-copy rounds at most (the first sends everything).
        public var rounds = 30
        /// Stop when a round has at most this many dirty pages.
        public var smallEnough = 64
        /// Stop when the stream reaches this many times the domain's memory.
        public var bytesFactor = 3.0
        /// Keep the guest paused this long before the last copy (to test a
        /// destination that fails while the guest is paused).
        public var holdPaused = 0.0
        /// Awaited with the domain's id once the guest is claimed and paused (after
        /// `holdPaused`), before the last copy: the migration goes on when it returns. A
        /// test holds the pause there until it has looked at or killed the destination.
        public var whilePaused: (@Sendable (DomainID) async throws -> Void)?
        /// The defaults.
        public init() {}
    }

    private static func now() -> UInt64 { cxen_monotonic_ns() }
    private static let tracing = ProcessInfo.processInfo.environment["XENPV_MIGRATION_TRACE"] != nil
    private static func trace(_ s: @autoclosure () -> String) { if tracing { FileHandle.standardError.write(Data(("trace " + s() + "\n").utf8)) } }

    /// Asks guest `id` to suspend (`control/shutdown = suspend`, as Linux's toolstack
    /// does) and waits until its process calls `suspend`; then claims it. Its looks block
    /// (daemon round trips): on the mover's own thread, as below.
    static func pause(_ id: DomainID, on hv: RemoteHypervisor, timeout: Double) async throws -> UInt64 {
        let key = try await shutdownKey(of: id, on: hv)
        try await hv.store.write(key, "suspend")
        let deadline = now() + UInt64(timeout * 1e9)
        while try !suspended(id, on: hv) {
            guard now() < deadline else {
                try? await hv.store.write(key, "")
                throw DomainTransferError("domain \(id.rawValue) did not suspend within \(timeout) s (does its program answer control/shutdown?)")
            }
            usleep(200)
        }
        let paused = now()
        try claim(id, on: hv)
        return paused
    }

    /// `control/shutdown` of guest `id`, made first if missing.
    static func shutdownKey(of id: DomainID, on hv: RemoteHypervisor) async throws -> String {
        let key = XenStorePath.home(of: id) + "/control/shutdown"
        if try await hv.store.readIfPresent(key) == nil {
            // A domain made without libxl's layout: the key, writable by the guest, as libxl makes it.
            try await hv.store.write(key, "")
            try await hv.store.setPermissions(key, XenStorePermissions(owner: id))
        }
        return key
    }

    // Kept out of the async functions: typed throws there crash the optimiser (Swift 6.3.1).
    private static func suspended(_ id: DomainID, on hv: RemoteHypervisor) throws -> Bool { try hv.isSuspended(id) }
    private static func claim(_ id: DomainID, on hv: RemoteHypervisor) throws { try hv.claimSuspend(id) }
    /// Whether `id`'s process arrived on `hv` (nil: not joined yet).
    private static func arrived(_ id: DomainID, on hv: RemoteHypervisor) -> Bool? { try? hv.hasArrived(id) }

    /// The domain's name from the store, or `domain-ID`.
    static func name(_ id: DomainID, on hv: RemoteHypervisor) async -> String {
        (try? await hv.store.read(XenStorePath.home(of: id) + "/name")) ?? "domain-\(id.rawValue)"
    }

    /// Waits for domain `id` to be gone from `hv`'s daemon (blocking, on the mover's thread).
    static func waitGone(_ id: DomainID, on hv: RemoteHypervisor, timeout: Double) async throws {
        let deadline = now() + UInt64(timeout * 1e9)
        while try hv.report().domains.contains(id) {
            guard now() < deadline else { throw DomainTransferError("domain \(id.rawValue) still exists on the source after \(timeout) s") }
            usleep(1000)
        }
    }

    /// `xenpv save`: suspends guest `id`, writes it to `path`, releases it here. Its
    /// process stays parked in its `suspend` call until a restore sends it on.
    public static func save(_ id: DomainID, to path: String, on hv: RemoteHypervisor, timeout: Double = 30) async throws -> Int {
        try await onOwnExecutor(named: "xenpv-save") { try await saveHere(id, to: path, on: hv, timeout: timeout) }
    }

    private static func saveHere(_ id: DomainID, to path: String, on hv: RemoteHypervisor, timeout: Double) async throws -> Int {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DomainTransferError("\(path): \(String(cString: strerror(errno)))") }
        var claimed = false
        do {
            let name = await name(id, on: hv)
            _ = try await pause(id, on: hv, timeout: timeout)
            claimed = true
            let writer = try DomainStreamWriter(hypervisor: hv, domain: id, output: fd)
            try writer.begin(name: name)
            try writer.sendAll()
            try await writer.finish()
            // A pipe or socket (`xenpv save D /dev/stdout | …`) has nothing to sync: EINVAL.
            guard fsync(fd) == 0 || errno == EINVAL else { throw DomainTransferError("\(path): fsync: \(String(cString: strerror(errno)))") }
            close(fd)
            try hv.parkSuspended(id)
            try await waitGone(id, on: hv, timeout: timeout)
            return writer.bytesWritten
        } catch {
            close(fd)
            unlink(path)
            if claimed { try? hv.cancelSuspend(id) }
            throw error
        }
    }

    /// `xenpv restore`: creates the domain of the stream in `path` on `destination`
    /// (joined as dom0 to the daemon at `destinationSocket`) and, if its saved process
    /// waits on `parkedOn`, sends it there. Returns the restore and whether a process went.
    public static func restore(from path: String, on destination: RemoteHypervisor, destinationSocket: String,
                               parkedOn: RemoteHypervisor?) async throws -> (DomainStreamReader.Restored, Bool) {
        try await onOwnExecutor(named: "xenpv-restore") {
            try await restoreHere(from: path, on: destination, destinationSocket: destinationSocket, parkedOn: parkedOn)
        }
    }

    private static func restoreHere(from path: String, on destination: RemoteHypervisor, destinationSocket: String,
                                    parkedOn: RemoteHypervisor?) async throws -> (DomainStreamReader.Restored, Bool) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DomainTransferError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let reader = DomainStreamReader(hypervisor: destination)
        let read = try reader.readStream(from: fd)
        let restored = try await reader.complete(read)
        guard let parkedOn else { return (restored, false) }
        let went = Self.resumeParked(parkedOn, restored, destinationSocket)
        if let failure = went.failure { throw failure }
        return (restored, went.sent)
    }

    /// Sends the parked process on; no process waiting there is no error.
    private static func resumeParked(_ hv: RemoteHypervisor, _ restored: DomainStreamReader.Restored, _ socket: String)
        -> (sent: Bool, failure: HypervisorError?)
    {
        do throws(HypervisorError) {
            try hv.resumeParked(restored.domain, socketPath: socket, token: restored.token)
            return (true, nil)
        } catch {
            return (false, error.code == .errno(.noSuchProcess) ? nil : error)
        }
    }

    /// Where a migration's stream goes.
    public enum Target: Sendable {
        /// The destination daemon at `socket`, joined here as dom0: the stream runs over a
        /// socket pair to a thread of this process that restores through it.
        case daemon(RemoteHypervisor, socket: String)
        /// A `xenpv migrate-receive` at the other end of this connected socket (Unix or
        /// TCP), which restores on its host and answers `READY TOKEN SOCKET` after the
        /// stream, then `ARRIVED` once the guest's process is there (``receive(from:on:socket:timeout:)``).
        case receiver(fd: Int32)
    }

    /// `xenpv migrate`: pre-copy rounds under log-dirty, the guest's pause, the last
    /// copy, the destination takes over, the source lets go. If the destination fails
    /// before taking over, the guest's suspend is cancelled and it goes on here.
    public static func migrate(_ id: DomainID, from source: RemoteHypervisor, to target: Target,
                               budget: Budget = Budget(), timeout: Double = 30, progress: @Sendable (String) -> Void = { _ in }) async throws -> Figures {
        try await onOwnExecutor(named: "xenpv-migrate") {
            try await migrateHere(id, from: source, to: target, budget: budget, timeout: timeout, progress: progress)
        }
    }

    private static func migrateHere(_ id: DomainID, from source: RemoteHypervisor, to target: Target,
                                    budget: Budget, timeout: Double, progress: @Sendable (String) -> Void) async throws -> Figures {
        var figures = Figures()
        let start = now()
        let sendFD: Int32
        var receiving: Task<DomainStreamReader.ReadStream, any Error>?
        var reader: DomainStreamReader?
        switch target {
        case .daemon(let destination, _):
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                throw DomainTransferError("socketpair: \(String(cString: strerror(errno)))")
            }
            sendFD = pair[0]
            let receiveFD = pair[1]
            var big: Int32 = 4 << 20
            setsockopt(receiveFD, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(4))
            let r = DomainStreamReader(hypervisor: destination)
            reader = r
            // The receiving host: its own thread, as if across the network.
            receiving = Task { try await onOwnThread(named: "xenpv-transfer") { () throws -> DomainStreamReader.ReadStream in
                defer { close(receiveFD) }
                return try r.readStream(from: receiveFD)
            } }
        case .receiver(let fd):
            sendFD = fd
        }
        var big: Int32 = 4 << 20
        setsockopt(sendFD, SOL_SOCKET, SO_SNDBUF, &big, socklen_t(4))
        var claimed = false
        var logging = false
        do {
            let name = await name(id, on: source)
            let writer = try DomainStreamWriter(hypervisor: source, domain: id, output: sendFD)
            try source.startDirtyLog(id)
            logging = true
            try writer.begin(name: name)
            try await writer.sendDevicesAhead()
            var sent = try writer.sendAll()
            figures.pagesPerRound.append(sent)
            progress("round 1: \(sent) pages")
            let memoryBytes = Double(try source.exportDomain(id).mainFrames * XenPage.size)
            // Read while pre-copy runs; the pause then only confirms nothing changed since
            // (the key the pause writes made first: making it would change the home).
            _ = try await shutdownKey(of: id, on: source)
            writer.readStoreAhead()
            while figures.pagesPerRound.count < budget.rounds {
                let dirty = try source.readAndClearDirty(id)
                sent = try writer.send(dirty: dirty)
                figures.pagesPerRound.append(sent)
                progress("round \(figures.pagesPerRound.count): \(sent) pages")
                let previous = figures.pagesPerRound[figures.pagesPerRound.count - 2]
                if sent <= budget.smallEnough || (figures.pagesPerRound.count > 2 && sent >= previous)
                    || Double(writer.bytesWritten) > budget.bytesFactor * memoryBytes { break }
            }
            let paused = try await pause(id, on: source, timeout: timeout)
            trace("claimed: \(Double(now() - paused) / 1e6) ms after the pause")
            claimed = true
            if budget.holdPaused > 0 { try await Task.sleep(nanoseconds: UInt64(budget.holdPaused * 1e9)) }
            if let whilePaused = budget.whilePaused { try await whilePaused(id) }
            let lastDirty = try source.readAndClearDirty(id)
            trace("last dirty log read: \(Double(now() - paused) / 1e6) ms after the pause")
            sent = try writer.send(dirty: lastDirty)
            figures.pagesPerRound.append(sent)
            try await writer.finish()
            trace("last pages, grants, store and devices sent: \(Double(now() - paused) / 1e6) ms after the pause")
            shutdown(sendFD, Int32(SHUT_WR))
            let token: DomainToken
            let destinationSocket: String
            if let receiving, let reader, case .daemon(_, let socket) = target {
                let read = try await receiving.value
                trace("received: \(Double(now() - paused) / 1e6) ms after the pause")
                token = try await reader.complete(read).token
                destinationSocket = socket
            } else {
                let line = try readLine(sendFD)
                let words = line.split(separator: " ").map(String.init)
                guard words.count == 3, words[0] == "READY", let t = DomainToken(words[1]) else {
                    throw DomainTransferError("the receiver answered \(line.prefix(200).debugDescription)")
                }
                (token, destinationSocket) = (t, words[2])
            }
            trace("restored there: \(Double(now() - paused) / 1e6) ms after the pause")
            try source.resumeElsewhere(id, socketPath: destinationSocket, token: token)
            trace("let go: \(Double(now() - paused) / 1e6) ms after the pause")
            claimed = false
            // The source's log goes with the domain there (stopping it first would unprotect
            // all its memory while the guest is paused).
            logging = false
            switch target {
            case .daemon(let destination, _): try await waitArrival(id, on: destination, timeout: timeout)
            case .receiver:
                let line = try readLine(sendFD)
                guard line == "ARRIVED" else { throw DomainTransferError("the receiver answered \(line.prefix(200).debugDescription)") }
            }
            figures.downtimeSeconds = Double(now() - paused) / 1e9
            figures.bytes = writer.bytesWritten
            close(sendFD)
            try await waitGone(id, on: source, timeout: timeout)
            figures.totalSeconds = Double(now() - start) / 1e9
            return figures
        } catch {
            close(sendFD)
            _ = try? await receiving?.value
            if logging { try? source.stopDirtyLog(id) }
            if claimed { try? source.cancelSuspend(id) }
            throw DomainTransferError("migration of domain \(id.rawValue) failed: \(error); it goes on on the source")
        }
    }

    /// Resumed there once its process joined `destination` and handed over its write
    /// tracking (a process that cannot track writes: once it joined, after 2 s).
    static func waitArrival(_ id: DomainID, on destination: RemoteHypervisor, timeout: Double) async throws {
        let deadline = now() + UInt64(timeout * 1e9)
        let joinedOnly = now() + 2_000_000_000
        while true {
            let arrived = Self.arrived(id, on: destination)
            if arrived == true || (arrived == false && now() > joinedOnly) { return }
            guard now() < deadline else { throw DomainTransferError("domain \(id.rawValue)'s process did not join the destination") }
            usleep(100)
        }
    }

    /// `xenpv migrate-receive`: restores the stream arriving on `fd` through `destination`
    /// (joined as dom0 to the daemon at `socket`), answers `READY TOKEN SOCKET`, waits for
    /// the guest's process to arrive and answers `ARRIVED`. A failure is answered
    /// `ERROR …` and thrown; the restore is dropped.
    public static func receive(from fd: Int32, on destination: RemoteHypervisor, socket: String, timeout: Double = 30) async throws
        -> DomainStreamReader.Restored
    {
        try await onOwnExecutor(named: "xenpv-receive") { try await receiveHere(from: fd, on: destination, socket: socket, timeout: timeout) }
    }

    private static func receiveHere(from fd: Int32, on destination: RemoteHypervisor, socket: String, timeout: Double) async throws
        -> DomainStreamReader.Restored
    {
        let reader = DomainStreamReader(hypervisor: destination)
        do {
            let read = try reader.readStream(from: fd)
            let restored = try await reader.complete(read)
            try writeLine(fd, "READY \(restored.token) \(socket)")
            try await waitArrival(restored.domain, on: destination, timeout: timeout)
            try writeLine(fd, "ARRIVED")
            return restored
        } catch {
            try? writeLine(fd, "ERROR \(error)")
            throw error
        }
    }

    /// One line (at most 4 KiB) from `fd`, without its newline; blocking.
    static func readLine(_ fd: Int32) throws -> String {
        var bytes: [UInt8] = []
        var b: UInt8 = 0
        while bytes.count < 4096 {
            let n = read(fd, &b, 1)
            if n < 0, errno == EINTR { continue }
            guard n == 1 else { throw DomainTransferError("the receiver went away") }
            if b == 0x0A { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(b)
        }
        throw DomainTransferError("the receiver's answer is too long")
    }

    static func writeLine(_ fd: Int32, _ line: String) throws {
        let bytes = Array((line.replacingOccurrences(of: "\n", with: " ") + "\n").utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw DomainTransferError("writing to the sender: \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}
