import ArgumentParser
import Logging
import XenStore

/// `xenpv xenstored --socket PATH`: the store in the foreground until SIGTERM.
struct XenstoredCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstored",
        abstract: "Run a xenstore daemon on a Unix socket (Xen's xenstore-* tools work with XENSTORED_PATH=PATH).")

    @Option(help: "The Unix socket to listen on.")
    var socket: String

    @Flag(help: "Log every request.")
    var verbose = false

    func run() throws {
        var logger = Logger(label: "xenstored")
        logger.logLevel = verbose ? .debug : .info
        logger.info("xenstored listening on \(socket)")
        let signal = try XenStoreServer.runForeground(socketPath: socket, logger: logger)
        logger.info("xenstored stopped by signal \(signal)")
    }
}
