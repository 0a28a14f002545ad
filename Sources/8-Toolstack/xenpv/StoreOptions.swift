import ArgumentParser
import Foundation
import XenStore

/// Where a command finds xenstored: `--store`, else `XENSTORED_PATH` (as
/// Xen's own tools), else xenstored's usual socket.
struct StoreOptions: ParsableArguments {
    @Option(name: .customLong("store"), help: "xenstored's socket (default: $XENSTORED_PATH or /run/xenstored/socket).")
    var path: String?

    var socketPath: String {
        path ?? ProcessInfo.processInfo.environment["XENSTORED_PATH"] ?? "/run/xenstored/socket"
    }

    func connect() throws -> XenStoreClient {
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw CommandError("no xenstored socket at \(socketPath) (start one with `xenpv xenstored --socket PATH`, or pass --store)")
        }
        do { return try XenStoreClient(socketPath: socketPath) } catch {
            throw CommandError("cannot connect to xenstored at \(socketPath): \(error)")
        }
    }
}

/// A failure while running a command (not a usage mistake): printed as
/// "Error: …" without the usage text, exit status 1.
struct CommandError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
