import ArgumentParser
import Foundation
import XenSimulatorDaemon

/// `xenpv hypervisor --socket PATH`: the simulated machine other processes join.
struct HypervisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hypervisor",
        abstract: "Run the hypervisor daemon: domains, grant tables, event channels and the store, shared by processes.",
        discussion: """
            Processes join over the socket: `xenpv backend` as dom0, each `xenpv guest` as a new domU.
            The store's dom0 socket is PATH.xenstore. Stop with Ctrl-C; every joined process then exits.
            """)

    @Option(help: "Unix socket to listen on.")
    var socket: String

    @Flag(help: "Log set-up operations.")
    var verbose = false

    func validate() throws {
        let dir = (socket as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) || !isDir.boolValue {
            throw ValidationError("no directory \(dir) for the socket")
        }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: verbose)
        ProcessSupport.blockTerminationSignals()
        let daemon = HypervisorDaemon(socketPath: socket, logger: logger)
        do { try daemon.start() } catch { throw ValidationError("cannot start the hypervisor on \(socket): \(error)") }
        say("xenpv hypervisor: listening on \(socket) (store: \(daemon.storeSocketPath))")
        ProcessSupport.waitForTermination()
        daemon.stop()
        say("xenpv hypervisor: stopped")
    }
}
