import ArgumentParser
import Foundation
import XenDemo

/// `xenpv demo`: the main job — a whole host in one process on the embedded
/// simulated hypervisor.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run dom0 (xenstored, backends) and a guest (frontends) in one process and move data through them.")

    @Option(help: "Frames the guest sends through its NIC.")
    var packets = 20_000

    @Option(help: "Bytes per frame (60 to 65535).")
    var packetSize = 1500

    @Option(help: "A disk image to serve instead of a sparse temporary one (its contents are overwritten in places).")
    var disk: String?

    @Option(help: "Size of the temporary disk image in MiB.")
    var diskMegabytes = 256

    func validate() throws {
        guard packets > 0 else { throw ValidationError("--packets must be positive") }
        guard (60 ... 65535).contains(packetSize) else { throw ValidationError("--packet-size must be 60 to 65535") }
        guard (64 ... 1 << 20).contains(diskMegabytes) else { throw ValidationError("--disk-megabytes must be 64 to 1048576") }
        if let disk, !FileManager.default.fileExists(atPath: disk) { throw ValidationError("no disk image at \(disk)") }
    }

    func run() async throws {
        var options = DemoOptions()
        options.packets = packets
        options.packetSize = packetSize
        options.diskPath = disk
        options.diskBytes = UInt64(diskMegabytes) << 20
        let demo = Demo(options: options) { print($0) }
        do {
            _ = try await demo.run()
            print("Demo finished: every check passed.")
        } catch {
            print("Demo failed: \(error)")
            throw ExitCode.failure
        }
    }
}
