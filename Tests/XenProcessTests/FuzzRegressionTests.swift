import Testing
import XenHypervisor
@testable import XenSimulatorDaemon

/// Inputs the libFuzzer targets in Fuzz/ found to crash, kept as ordinary tests.
@Suite struct DaemonWireFuzzRegressionTests {
    /// fuzz-daemon-wire: a report reply whose domain count (words[4]) is past Int.max
    /// trapped in `Int(_:)` instead of being refused as malformed. The record as found
    /// is Fixtures/fuzz/daemon-wire/crash-report-count (96 bytes; these are its words), kept in
    /// the target's corpus so every fuzz run replays it.
    @Test func reportWithHugeCountsIsMalformed() throws {
        let found: [UInt64] = [0x100_0000_0000, 0xa8a8_006a_0000_0001, 0xa8a8_a8a8_a8a8_a8a8, 0xa8a8_a8a8_a8a8_a8a8,
                               0xa8a8_a8a8_a8a8_a8a8, 0x6a_6aa8_a8a8_a8a8, 0x1_6a6a]
        let record = WireMessage(found).encoded()
        let decoded = try #require(record.withUnsafeBytes { WireMessage.decode($0, fds: []) })
        #expect(throws: HypervisorError.self) { try DaemonReport(words: decoded.words) }
        // Every count word past Int.max, and a domain count of Int.max: refused, never a trap.
        for (i, big) in [1, 2, 3, 4].flatMap({ i in [UInt64.max, UInt64(Int.max) + 1].map { (i, $0) } }) + [(4, UInt64(Int.max))] {
            var words: [UInt64] = [0, 1, 2, 3, 1, 7, 9]
            words[i] = big
            #expect(throws: HypervisorError.self) { try DaemonReport(words: words) }
        }
        // A well-formed report still parses.
        let report = try DaemonReport(words: [0, 1, 2, 3, 2, 0, 5, 42])
        #expect(report.domains.map(\.rawValue) == [0, 5] && report.mappings == 1 && report.ports == 2
                && report.processes == 3 && report.calls == 42)
    }
}
