import Foundation
import TestSupport
import Testing
import XenBlockBenchmark

@Suite(.timeLimit(.minutes(5)))
struct BlockBenchmarkTests {
    @Test(arguments: BlockBenchmarkConfiguration.Pattern.allCases)
    func aShortRunMovesDataAndReportsEveryFigure(_ pattern: BlockBenchmarkConfiguration.Pattern) async throws {
        let image = try TemporaryImage(bytes: 4 << 20)
        var c = BlockBenchmarkConfiguration(image: image.path)
        c.pattern = pattern
        c.blockSize = pattern.rawValue.hasPrefix("rand") ? 4096 : 131072
        c.queueDepth = 4
        c.seconds = 0.2
        let config = c
        let r = try await withTimeout(20) { try await BlockBenchmark.run(config) }
        #expect(r.operations > 0)
        let object = try JSONSerialization.jsonObject(with: Data(r.json.utf8)) as? [String: Any]
        for key in ["iops", "mib_per_second", "p50_us", "p99_us"] { #expect(object?[key] is Double, "\(key)") }
        #expect(r.p50Microseconds <= r.p99Microseconds)
    }

    @Test func badSettingsAreRefused() async throws {
        var c = BlockBenchmarkConfiguration(image: "/nonexistent/image")
        await #expect(throws: BlockBenchmarkError.self) { try await BlockBenchmark.run(c) }
        c.blockSize = 1000
        await #expect(throws: BlockBenchmarkError.self) { try await BlockBenchmark.run(c) }
    }
}

@Suite(.timeLimit(.minutes(5)))
struct GrantPathMeasurementTests {
    @Test func everyPathIsTimedAndLeavesNothingBehind() throws {
        let r = try GrantPathMeasurement.run(iterations: 200)
        #expect(r.grantCopy > 0 && r.grantCopyBatchOf11 > 0 && r.mapCopyUnmap > 0 && r.persistentMapCopy > 0)
    }
}
