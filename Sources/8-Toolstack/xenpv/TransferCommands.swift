import ArgumentParser
import Foundation
import Glibc
import XenABI
import XenLocks
import XenToolstack

/// `xenpv save DOM FILE`: `xl save`.
struct SaveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save",
        abstract: "Suspend a domain, write it to a file, and release it on this host; its program waits for `xenpv restore`.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The file to write.") var file: String
    @OptionGroup var options: ToolstackOptions
    @Option(help: "Seconds to wait for the guest to suspend.") var timeout = 30.0

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            let bytes = try await transferStep { try await toolstack.save(found.id, to: file, timeout: timeout) }
            say("Saved domain \(found.name) (id=\(found.id.rawValue)) to \(file): \(bytes) bytes")
        }
    }
}

/// `xenpv restore FILE [--to HOST-SOCKET]`: `xl restore`.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Create a saved domain again (on this host or --to another) and resume its waiting program there.")

    @Argument(help: "The file `xenpv save` wrote.") var file: String
    @Option(help: "The destination hypervisor daemon's socket (default: this host, --connect).") var to: String?
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let destination = try to.map { try Toolstack(socketPath: $0) }
            defer { destination?.close() }
            let socket = try to ?? options.socket()
            let (restored, resumed) = try await transferStep {
                try await toolstack.restore(from: file, to: destination, destinationSocket: socket)
            }
            say("Restored domain \(restored.name) (id=\(restored.domain.rawValue)) on \(socket)")
            if !resumed { say("No saved program waits for it here; a guest joins it with --token \(restored.token)") }
        }
    }
}

/// `xenpv migrate DOM --to HOST-SOCKET` (or `--via ADDRESS` of a `xenpv migrate-receive`):
/// `xl migrate`, pre-copy then stop-and-copy.
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate", abstract: "Live-migrate a domain to another hypervisor daemon.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Option(help: "The destination hypervisor daemon's socket (this process restores there).") var to: String?
    @Option(help: ArgumentHelp("A `xenpv migrate-receive` to stream to instead: unix:PATH or tcp:HOST:PORT.", valueName: "ADDRESS"))
    var via: String?
    @OptionGroup var options: ToolstackOptions
    @Option(help: "Pre-copy rounds at most.") var rounds = 30
    @Option(help: "Seconds to wait for the guest to suspend and to arrive.") var timeout = 30.0
    @Option(help: ArgumentHelp("Seconds to keep the guest paused before the last copy (tests a destination failing then).", visibility: .hidden))
    var holdPaused = 0.0
    @Option(help: ArgumentHelp(
        "Keep the guest paused before the last copy until this file exists, at most 600 s (tests a destination failing then).",
        valueName: "PATH", visibility: .hidden))
    var holdPausedUntilFile: String?

    /// The longest `--hold-paused-until-file` waits for its file, in seconds.
    static let holdLimit = 600.0

    func validate() throws {
        guard holdPaused >= 0, holdPaused <= Self.holdLimit else { throw ValidationError("--hold-paused must be 0 to \(Int(Self.holdLimit)) seconds") }
        if let holdPausedUntilFile, holdPausedUntilFile.isEmpty { throw ValidationError("--hold-paused-until-file needs a path") }
        guard rounds >= 1, rounds <= 1000 else { throw ValidationError("--rounds must be 1 to 1000, not \(rounds)") }
        guard (to == nil) != (via == nil) else { throw ValidationError("give the destination as --to SOCKET or --via ADDRESS, one of them") }
        if let via { _ = try StreamAddress(via) }
    }

    func run() async throws {
        try await toolstackStep {
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            var budget = DomainMover.Budget()
            budget.rounds = rounds
            budget.holdPaused = holdPaused
            if let path = holdPausedUntilFile { budget.whilePaused = { id in try await Self.hold(id, until: path) } }
            let figures: DomainMover.Figures
            let whereTo: String
            if let via {
                let fd = try StreamAddress(via).connect()
                whereTo = via
                figures = try await transferStep { try await toolstack.migrate(found.id, toReceiverOn: fd, budget: budget, timeout: timeout) }
            } else {
                let to = to ?? ""
                let destination = try Toolstack(socketPath: to)
                defer { destination.close() }
                whereTo = to
                figures = try await transferStep {
                    try await toolstack.migrate(found.id, to: destination, destinationSocket: to, budget: budget, timeout: timeout)
                }
            }
            say("Migrated domain \(found.name) (id=\(found.id.rawValue)) to \(whereTo)")
            say("\(figures)")
        }
    }

    /// `--hold-paused-until-file`: says that domain `id` is claimed and paused, then waits
    /// until `path` exists (looking every 10 ms, at most `holdLimit` seconds) and goes on.
    static func hold(_ id: DomainID, until path: String) async throws {
        say("xenpv migrate: holding domain \(id.rawValue) paused until \(path) exists")
        let deadline = ContinuousClock.now + .seconds(holdLimit)
        while access(path, F_OK) != 0 {
            guard ContinuousClock.now < deadline else {
                say("xenpv migrate: \(path) did not appear within \(Int(holdLimit)) s; going on")
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

/// `xenpv migrate-receive --listen ADDRESS`: `xl migrate-receive`, the destination's end
/// of one migration over a Unix or TCP socket.
struct MigrateReceiveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-receive", abstract: "Receive one migration on a socket and restore it on this host's daemon.")

    @Option(help: ArgumentHelp("Where to listen: unix:PATH or tcp:HOST:PORT.", valueName: "ADDRESS")) var listen: String
    @OptionGroup var options: ToolstackOptions
    @Option(help: "Seconds to wait for the guest's process to arrive.") var timeout = 30.0

    func validate() throws { _ = try StreamAddress(listen) }

    func run() async throws {
        try await toolstackStep {
            let socket = try options.socket()
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let address = try StreamAddress(listen)
            let listener = try address.listen()
            say("xenpv migrate-receive: listening on \(listen)")
            let fd = try await DomainMoverThread.accept(listener)
            close(listener)
            address.cleanUp()
            defer { close(fd) }
            let restored = try await transferStep { try await toolstack.receiveMigration(from: fd, socket: socket, timeout: timeout) }
            say("Received domain \(restored.name) (id=\(restored.domain.rawValue)); its process arrived on \(socket)")
        }
    }
}

/// Blocking socket calls off the cooperative pool.
enum DomainMoverThread {
    static func accept(_ listener: Int32) async throws -> Int32 {
        try await withCheckedThrowingContinuation { (k: CheckedContinuation<Int32, any Error>) in
            startDetachedThread(named: "migrate-accept") {
                var fd: Int32
                repeat { fd = Glibc.accept(listener, nil, nil) } while fd < 0 && errno == EINTR
                if fd < 0 { k.resume(throwing: CommandError("accept: \(String(cString: strerror(errno)))")) } else { k.resume(returning: fd) }
            }
        }
    }
}

/// `unix:PATH` or `tcp:HOST:PORT`, where a migration stream goes.
struct StreamAddress {
    enum Kind { case unix(String), tcp(host: String, port: UInt16) }
    let kind: Kind

    init(_ text: String) throws {
        if text.hasPrefix("unix:"), text.count > 5, text.utf8.count < 100 {
            kind = .unix(String(text.dropFirst(5)))
        } else if text.hasPrefix("tcp:"), let colon = text.lastIndex(of: ":"), colon > text.index(text.startIndex, offsetBy: 3),
            let port = UInt16(text[text.index(after: colon)...]), port > 0
        {
            kind = .tcp(host: String(text[text.index(text.startIndex, offsetBy: 4)..<colon]), port: port)
        } else {
            throw ValidationError("a stream address is unix:PATH or tcp:HOST:PORT, not \(text.debugDescription)")
        }
    }

    private func addresses() throws -> [(Int32, Data)] {
        switch kind {
        case .unix(let path):
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            return [(AF_UNIX, withUnsafeBytes(of: &addr) { Data($0) })]
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
                throw CommandError("cannot resolve \(host)")
            }
            defer { freeaddrinfo(list) }
            var out: [(Int32, Data)] = []
            var p: UnsafeMutablePointer<addrinfo>? = first
            while let a = p {
                out.append((a.pointee.ai_family, Data(bytes: a.pointee.ai_addr, count: Int(a.pointee.ai_addrlen))))
                p = a.pointee.ai_next
            }
            return out
        }
    }

    func connect() throws -> Int32 {
        for (family, addr) in try addresses() {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            let rc = addr.withUnsafeBytes { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if rc == 0 { return fd }
            close(fd)
        }
        throw CommandError("cannot connect to the receiver: \(String(cString: strerror(errno)))")
    }

    func listen() throws -> Int32 {
        for (family, addr) in try addresses() {
            let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
            let rc = addr.withUnsafeBytes { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if rc == 0, Glibc.listen(fd, 1) == 0 { return fd }
            close(fd)
        }
        throw CommandError("cannot listen on the address: \(String(cString: strerror(errno)))")
    }

    /// A Unix socket's file goes once its one connection is accepted.
    func cleanUp() { if case .unix(let path) = kind { unlink(path) } }
}

/// Turns a transfer's errors into one-line command errors.
func transferStep<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as DomainTransferError {
        throw CommandError("\(error)")
    } catch let error as ToolstackError {
        throw CommandError("\(error)")
    } catch {
        throw CommandError("\(error)")
    }
}
