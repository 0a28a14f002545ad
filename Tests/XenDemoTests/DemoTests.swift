import Synchronization
import Testing
@testable import XenDemo

/// `xenpv demo` is the README's main job: it must pass its own checks.
@Suite(.timeLimit(.minutes(5)))
struct DemoTests {
    @Test func demoRunsEndToEndAndLeavesNothingBehind() async throws {
        var options = DemoOptions()
        options.packets = 2000
        // Other suites share the pool and the two cores: a handshake may wait its turn.
        options.handshakeSeconds = 60
        let lines = Mutex<[String]>([])
        let report = try await Demo(options: options) { line in lines.withLock { $0.append(line) } }.run()
        #expect(report.netPackets == 2000 && report.netMismatches == 0)
        #expect(report.leftovers.isEmpty)
        let said = lines.withLock { $0 }
        #expect(said.contains { $0.contains("Connected") })
        #expect(said.contains { $0.contains("no mapped grants") })
    }
}
