import Foundation
import Glibc
import TestSupport
import Testing
import XenHypervisor
import XenSockets
@testable import XenSimulatorDaemon
@testable import XenSimulatorClient

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

/// A process trusts its hypervisor, but a join reply that does not hold together (a
/// slice past the memory, references past the table, counts past Int.max) is an error
/// from `RemoteHypervisor`, never a trap: a fake daemon sends each such reply.
@Suite struct JoinReplyTests {
    @Test(arguments: [
        [0, 1, 0, 100, 10, 8, 100, 512],                 // the slice runs past the memory
        [0, 1, 0, 16, 64, 8, 600, 512],                  // references past the table
        [0, 1, UInt64.max, 16, 64, 8, 100, 512],         // a slice start past Int.max
        [0, 1, 0, 16, UInt64.max, 8, 100, 512],          // memory past Int.max
        [0, 1, 0, 16, 64, 100, 8, 512],                  // a reversed reference range
    ] as [[UInt64]])
    func aMalformedJoinReplyIsAnErrorNotATrap(words: [UInt64]) async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/fake.sock"
        let listener = try LocalSocket.listen(at: path, kind: .seqpacket)
        defer { close(listener) }
        let daemon = Thread {
            let c = accept(listener, nil, nil)
            guard c >= 0 else { return }
            defer { close(c) }
            guard Wire.receive(c) != nil else { return }
            let fds = (0..<3).map { _ in open("/dev/null", O_RDONLY) }
            _ = Wire.send(c, WireMessage(words, fds: fds))
            for fd in fds { close(fd) }
        }
        daemon.start()
        // The join's round trip blocks: on a thread of its own (a Task.detached would
        // hold a cooperative-pool thread meanwhile).
        let outcome = await onThread { () -> HypervisorError.Code? in
            do {
                _ = try RemoteHypervisor(socketPath: path, as: .dom0, onDaemonLost: ignoreLoss)
                return nil
            } catch let error as HypervisorError {
                return error.code
            } catch {
                return nil
            }
        }
        #expect(outcome == .closed)
    }
}
