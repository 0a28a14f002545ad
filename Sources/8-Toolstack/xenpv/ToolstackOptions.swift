import ArgumentParser
import Foundation
import XenStore
import XenToolstack
import XenWorld

/// What the domain commands (`create`, `console`, `shutdown`, `destroy`) share: the
/// daemon's socket and the toolstack's state directory beside it.
struct ToolstackOptions: ParsableArguments {
    @Option(help: "The hypervisor daemon's socket (default: $XENPV_HYPERVISOR_SOCKET).")
    var connect: String?

    @Option(help: "Where console logs (console/guest-NAME.log) and domain records are kept (default: SOCKET.state).")
    var stateDir: String?

    func socket() throws -> String {
        guard let path = connect ?? ProcessInfo.processInfo.environment[JoinedDomain.socketVariable] else {
            throw ValidationError("--connect SOCKET is needed (a `xenpv hypervisor --socket SOCKET`)")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            throw CommandError("no hypervisor socket at \(path) (start `xenpv hypervisor --socket \(path)`)")
        }
        return path
    }

    func state() throws -> StateDirectory {
        if let stateDir { return StateDirectory(path: stateDir) }
        return StateDirectory.beside(socket: try socket())
    }

    /// Joins the daemon as dom0.
    func toolstack() throws -> Toolstack {
        do { return try Toolstack(socketPath: try socket()) } catch let error as ToolstackError {
            throw CommandError("\(error)")
        }
    }

    /// The daemon's store, for commands that only read it.
    func store() throws -> XenStoreClient {
        let path = try socket() + ".xenstore"
        do { return try XenStoreClient(socketPath: path) } catch {
            throw CommandError("cannot connect to the daemon's store at \(path): \(error)")
        }
    }
}

/// Runs toolstack work, turning its errors into one-line command errors.
func toolstackStep<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as ToolstackError {
        throw CommandError("\(error)")
    } catch let error as DomainConfigError {
        throw CommandError("\(error)")
    }
}

/// How `block-detach` and `network-detach` let go of a device: as `xl`'s detach, wait for
/// the backend to close (bounded), or `--force` at once.
struct DetachOptions: ParsableArguments {
    @Option(help: "Seconds to wait for the backend to close before removing the device anyway.") var timeout = 10.0
    @Flag(help: "Remove the device at once, without waiting for the backend to close.") var force = false

    func validate() throws {
        guard timeout >= 0, timeout <= 3600 else { throw ValidationError("--timeout must be 0 to 3600 seconds, not \(timeout)") }
    }
}
