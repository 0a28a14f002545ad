import ArgumentParser
import Foundation
import Logging
import XenNetBack
import XenSimulatorDaemon

/// `xenpv backend --connect PATH [--disk IMAGE] [--nic BRIDGE]`: a dom0 process
/// serving the guests' devices.
struct BackendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backend",
        abstract: "Join the hypervisor as dom0 and serve every guest's vif (and vbd, once the block drivers land).",
        discussion: """
            Without --nic, each vif echoes the frames its guest sends back to it (for `xenpv guest net-echo`).
            With --nic BRIDGE, each vif is a TAP device vifD.N on that Linux bridge.
            --disk is checked but not served yet: the block backend is not on this branch.
            """)

    @Option(help: "The hypervisor daemon's socket.")
    var connect: String

    @Option(help: "Disk image for the guests' vbd.")
    var disk: String?

    @Option(help: "Linux bridge for the guests' vifs (default: echo frames back).")
    var nic: String?

    @Flag(help: "Log the handshakes.")
    var verbose = false

    func validate() throws {
        if let disk {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: disk, isDirectory: &isDir) else {
                throw ValidationError("no disk image at \(disk)")
            }
            guard !isDir.boolValue else { throw ValidationError("\(disk) is a directory, not a disk image") }
        }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: verbose)
        ProcessSupport.blockTerminationSignals()
        let hv = try ProcessSupport.join(connect, as: .dom0)
        let bridge = nic
        let backend = NetBackend(hypervisor: hv, store: hv.store, logger: logger) { id, features in
            if let bridge {
                return try TapAttachment(name: id.interfaceName, bridge: bridge, offloads: features.tapOffloads)
            }
            return EchoAttachment.make(swapAddresses: false)
        }
        let task = Task { try await backend.run() }
        if disk != nil { say("xenpv backend: note: vbd devices are not served yet (no block backend on this branch)") }
        say("xenpv backend: dom0 serving vifs (\(bridge.map { "bridge \($0)" } ?? "echo"))")
        // One line whenever the set of served vifs changes, for people and tests.
        let watcher = Thread {
            var last = ""
            while true {
                let now = backend.vifs.map { "\($0.identity) \($0.state)" }.joined(separator: ", ")
                if now != last {
                    say("xenpv backend: vifs: \(now.isEmpty ? "none" : now)")
                    last = now
                }
                usleep(100_000)
            }
        }
        watcher.start()
        ProcessSupport.waitForTermination()
        backend.closeAll()
        task.cancel()
        hv.close()
        say("xenpv backend: stopped")
    }
}

