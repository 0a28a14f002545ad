import ArgumentParser
import XenNetBenchmark

/// `xenpv bench bridge`: iperf3 through netfront/netback between two
/// namespaces against a plain veth pair, in one run.
struct BenchBridge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bridge",
        abstract: "iperf3 between namespaces through netfront and netback's vif on a bridge, against a veth pair (root).")

    @Option(help: "Seconds per iperf3 run.")
    var seconds = 5

    @Option(help: "The vif's queues (ring pairs, each with a thread on both sides; multi-queue TAPs when more than 1).")
    var queues = 1

    @Option(help: "iperf3's parallel streams (-P), through both; default: the number of queues.")
    var parallel: Int?

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard (1 ... 300).contains(seconds) else { throw ValidationError("--seconds must be 1 to 300") }
        guard (1 ... 16).contains(queues) else { throw ValidationError("--queues must be 1 to 16") }
        guard (1 ... 128).contains(parallel ?? queues) else { throw ValidationError("--parallel must be 1 to 128") }
    }

    func run() throws {
        do {
            let result = try BridgeBenchmark.run(seconds: Double(seconds), queues: queues, parallel: parallel ?? queues)
            print(json ? result.json : result.summary)
        } catch let failure as BridgeBenchmark.Failure {
            throw CommandError(failure.description)
        }
    }
}
