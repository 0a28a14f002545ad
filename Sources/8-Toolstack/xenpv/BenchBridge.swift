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

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard (1 ... 300).contains(seconds) else { throw ValidationError("--seconds must be 1 to 300") }
    }

    func run() throws {
        do {
            let result = try BridgeBenchmark.run(seconds: Double(seconds))
            print(json ? result.json : result.summary)
        } catch let failure as BridgeBenchmark.Failure {
            throw CommandError(failure.description)
        }
    }
}
