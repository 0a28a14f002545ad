import Foundation
import TestSupport
import Testing
import XenBlockBenchmark

@Suite(.timeLimit(.minutes(5)))
struct BlockBenchmarkTests {
    /// Each pattern with task callers and with chains of callbacks.
    @Test(arguments: BlockBenchmarkConfiguration.Pattern.allCases, [false, true])
    func aShortRunMovesDataAndReportsEveryFigure(_ pattern: BlockBenchmarkConfiguration.Pattern, _ callbacks: Bool) async throws {
        let image = try TemporaryImage(bytes: 4 << 20)
        var c = BlockBenchmarkConfiguration(image: image.path)
        c.pattern = pattern
        c.blockSize = pattern.rawValue.hasPrefix("rand") ? 4096 : 131072
        c.queueDepth = 4
        c.seconds = 0.2
        c.callbacks = callbacks
        let config = c
        let r = try await withTimeout(20) { try await BlockBenchmark.run(config) }
        // Every caller does at least one operation.
        #expect(r.operations >= 4)
        let object = try JSONSerialization.jsonObject(with: Data(r.json.utf8)) as? [String: Any]
        for key in ["iops", "mib_per_second", "p50_us", "p99_us"] { #expect(object?[key] is Double, "\(key)") }
        #expect(object?["callbacks"] as? Bool == callbacks)
        #expect(r.p50Microseconds <= r.p99Microseconds)
        if pattern == .write || pattern == .randwrite {
            // The callers write patterns, not zeros: what they wrote reached the image.
            let bytes = try Data(contentsOf: URL(fileURLWithPath: image.path))
            #expect(bytes.contains { $0 != 0 })
        }
    }

    @Test func badSettingsAreRefused() async throws {
        var c = BlockBenchmarkConfiguration(image: "/nonexistent/image")
        await #expect(throws: BlockBenchmarkError.self) { try await BlockBenchmark.run(c) }
        c.blockSize = 1000
        await #expect(throws: BlockBenchmarkError.self) { try await BlockBenchmark.run(c) }
        c = BlockBenchmarkConfiguration(image: BlockBenchmarkConfiguration.memoryImage)
        c.callbacks = true
        c.inPlace = true
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
