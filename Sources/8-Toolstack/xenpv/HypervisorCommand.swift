import ArgumentParser
import Foundation
import Glibc
import XenSimulatorClient
import XenSimulatorDaemon
import XenSockets

/// `xenpv hypervisor --socket PATH`: the simulated machine other processes join.
struct HypervisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hypervisor",
        abstract: "Run the hypervisor daemon: domains, grant tables, event channels and the store, shared by processes.",
        discussion: """
            Processes join over the socket: `xenpv backend` as dom0, each `xenpv guest` as a new domU.
            Only root, the daemon's own user and members of --group may join as dom0 or create guests;
            anyone else who can open the socket joins only a domain made for a token (`xenpv domain create`).
            The socket is created mode 0600 (0660 with --group). The store's dom0 socket is PATH.xenstore.
            Stop with Ctrl-C; every joined process then exits.
            """)

    @Option(help: "Unix socket to listen on (a file path; an existing file that is not a dead socket is refused).")
    var socket: String

    @Option(help: ArgumentHelp("A group whose members may also act as dom0 (the socket becomes mode 0660).", valueName: "NAME|GID"))
    var group: String?

    @Option(help: "dom0 backend processes admitted at once.")
    var backends = 1

    @Flag(help: "Log set-up operations.")
    var verbose = false

    func validate() throws {
        do { try LocalSocket.validate(path: socket) } catch { throw ValidationError("--socket: \(error)") }
        guard backends >= 1, backends <= 8 else { throw ValidationError("--backends must be 1 to 8, not \(backends)") }
        if let group { _ = try Self.groupID(group) }
        let dir = (socket as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) || !isDir.boolValue {
            throw ValidationError("no directory \(dir) for the socket")
        }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: verbose)
        ProcessSupport.blockTerminationSignals()
        var policy = DaemonPolicy()
        policy.maxBackends = backends
        if let group {
            let gid = try Self.groupID(group)
            policy.trusted = TrustedPeers(group: gid)
            policy.socketAccess = SocketAccess(group: gid)
        }
        let daemon = HypervisorDaemon(socketPath: socket, policy: policy, logger: logger)
        do { try daemon.start() } catch { throw ValidationError("cannot start the hypervisor on \(socket): \(error)") }
        say("xenpv hypervisor: listening on \(socket) (store: \(daemon.storeSocketPath))")
        ProcessSupport.waitForTermination()
        daemon.stop()
        say("xenpv hypervisor: stopped")
    }

    /// A group name or number from the user database.
    static func groupID(_ text: String) throws -> gid_t {
        if let n = gid_t(text) { return n }
        guard let g = getgrnam(text) else { throw ValidationError("--group: no group \(text.debugDescription)") }
        return g.pointee.gr_gid
    }
}
