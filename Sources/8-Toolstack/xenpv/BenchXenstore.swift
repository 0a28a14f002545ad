import ArgumentParser
import XenStore
import XenStoreBenchmark

/// `xenpv bench xenstore`: reads and writes per second over the socket with 1 and 8
/// clients, and watch-event latency, against an embedded xenstored.
struct BenchXenstore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstore",
        abstract: "xenstore reads/writes per second (1 and 8 clients) and watch-event latency over the Unix socket.")

    @Option(help: "Seconds per throughput measurement.")
    var seconds: Double = 2

    @Option(help: "Watch events to time.")
    var events: Int = 2000

    @Option(help: "Silent connections held open while measuring (the loop must not pay for them).")
    var idle: Int = 0

    @Option(help: "Nodes in the store when timing a transaction's first write (0 skips it).")
    var transactionNodes: Int = 30000

    func run() async throws {
        print(try await XenStoreBenchmark.run(clientCounts: [1, 8], seconds: seconds, events: events, idle: idle))
        if transactionNodes > 0 { print(try XenStoreBenchmark.transactionFirstWrite(nodes: transactionNodes)) }
    }
}
