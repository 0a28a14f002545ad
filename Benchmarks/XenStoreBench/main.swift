// Reads and writes per second over the xenstore Unix socket with 1 and 8 clients, and
// watch-event latency. Run: swift run -c release XenStoreBench [seconds]
import Foundation
import XenStoreBenchmark

let seconds = CommandLine.arguments.dropFirst().first.flatMap(Double.init) ?? 2
let report = try await XenStoreBenchmark.run(clientCounts: [1, 8], seconds: seconds)
print(report)
