import ArgumentParser
import Glibc
import Logging
import XenSockets
import XenStore
import XenStoreServer

/// `xenpv xenstored --socket PATH [--group NAME|GID]`: the store in the foreground until SIGTERM.
struct XenstoredCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstored",
        abstract: "Run a xenstore daemon on a Unix socket (Xen's xenstore-* tools work with XENSTORED_PATH=PATH).",
        discussion: """
            The socket is created mode 0600 (0660 with --group) whatever the umask, and only root, \
            this daemon's user and members of --group may use it: connections from anyone else are closed.
            """)

    @Option(help: "The Unix socket to listen on (a file path; empty or abstract names are refused, an existing non-socket is never removed).")
    var socket: String

    @Option(help: "A group (name or id) whose members may use the socket besides root and this daemon's user.")
    var group: String?

    @Flag(help: "Log every request.")
    var verbose = false

    func validate() throws {
        do { try LocalSocket.validate(path: socket) } catch { throw ValidationError("--socket: \(error)") }
        if let group, Self.gid(of: group) == nil { throw ValidationError("--group: no group named or numbered \(group)") }
    }

    static func gid(of name: String) -> gid_t? {
        if let id = gid_t(name) { return id }
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }

    func run() throws {
        var logger = Logger(label: "xenstored")
        logger.logLevel = verbose ? .debug : .info
        logger.info("xenstored listening on \(socket)")
        let signal = try XenStoreServer.runForeground(
            socketPath: socket, logger: logger, group: group.flatMap(Self.gid(of:)))
        logger.info("xenstored stopped by signal \(signal)")
    }
}
