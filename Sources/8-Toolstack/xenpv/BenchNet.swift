import ArgumentParser
import XenNetBenchmark

extension NetBenchmarkConfiguration.Direction: ExpressibleByArgument {}

/// `xenpv bench net`: frames through the netif ring pair on the simulator.
struct BenchNet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net",
        abstract: "Frames per second through netfront and netback on the simulator (no network stack).",
        discussion: """
            64-byte frames measure per-frame cost; 1500 bytes and 65535 (sent as TCP GSO) measure copying:
              swift run -c release xenpv bench net --packet-size 64 --seconds 5 --json
            """)

    @Option(help: "Bytes per frame (14 to 65535; above 1514 frames carry a TCP GSO extra).")
    var packetSize = 64

    @Option(help: "How long to run.")
    var seconds = 3.0

    @Option(help: "tx: guest to dom0; rx: dom0 to guest.")
    var direction = NetBenchmarkConfiguration.Direction.tx

    @OptionGroup var cpus: CPUPinningOptions

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard (14 ... 65535).contains(packetSize) else { throw ValidationError("--packet-size must be 14 to 65535") }
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
    }

    func run() throws {
        var c = NetBenchmarkConfiguration()
        c.packetSize = packetSize
        c.seconds = seconds
        c.direction = direction
        c.frontCPU = cpus.front
        c.backCPU = cpus.back
        let result = try NetBenchmark.run(c)
        print(json ? result.json : result.summary)
    }
}
