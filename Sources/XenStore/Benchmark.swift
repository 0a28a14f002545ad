import Foundation
import Logging

/// Throughput and watch latency over the Unix socket, for `xenpv bench xenstore` and
/// `Benchmarks/XenStoreBench`. Each client is one connection issuing requests back to back
/// (one outstanding request each), so figures include a full round trip per operation.
public enum XenStoreBenchmark {
    public struct Throughput: Sendable, CustomStringConvertible {
        public var clients: Int
        public var reads: Double
        public var writes: Double
        public var description: String {
            "\(clients) client(s): \(Int(reads)) reads/s, \(Int(writes)) writes/s"
        }
    }

    public struct Latency: Sendable, CustomStringConvertible {
        public var samples: Int
        public var medianMicroseconds: Double
        public var p99Microseconds: Double
        public var description: String {
            "watch event latency over \(samples) events: median \(Int(medianMicroseconds)) µs, p99 \(Int(p99Microseconds)) µs"
        }
    }

    public struct Report: Sendable, CustomStringConvertible {
        public var throughput: [Throughput]
        public var latency: Latency
        public var description: String {
            (throughput.map(\.description) + [latency.description]).joined(separator: "\n")
        }
    }

    /// Starts a server on a temporary socket and measures: reads and writes per second with
    /// each client count, for `seconds` each, and watch latency over `events` writes.
    public static func run(clientCounts: [Int] = [1, 8], seconds: Double = 2, events: Int = 2000) async throws -> Report {
        let path = "/tmp/xs-bench-\(getpid()).sock"
        var logger = Logger(label: "xenstored-bench")
        logger.logLevel = .error
        let server = XenStoreServer(socketPath: path, logger: logger)
        try server.start()
        defer { server.stop() }
        var results: [Throughput] = []
        for n in clientCounts {
            let clients = try (0..<n).map { _ in try XenStoreClient(socketPath: path) }
            defer { clients.forEach { $0.close() } }
            for (i, c) in clients.enumerated() { try await c.write("/bench/\(i)", "value-\(i)") }
            let writes = try await measure(clients, seconds) { c, i, k in try await c.write("/bench/\(i)", "v\(k)") }
            let reads = try await measure(clients, seconds) { c, i, _ in _ = try await c.read("/bench/\(i)") }
            results.append(Throughput(clients: n, reads: reads, writes: writes))
        }
        return Report(throughput: results, latency: try await watchLatency(path, events))
    }

    private static func measure(
        _ clients: [XenStoreClient], _ seconds: Double,
        _ op: @escaping @Sendable (XenStoreClient, Int, Int) async throws -> Void
    ) async throws -> Double {
        let start = Date()
        let deadline = start.addingTimeInterval(seconds)
        let total = try await withThrowingTaskGroup(of: Int.self) { g in
            for (i, c) in clients.enumerated() {
                g.addTask {
                    var k = 0
                    while Date() < deadline {
                        try await op(c, i, k)
                        k += 1
                    }
                    return k
                }
            }
            return try await g.reduce(0, +)
        }
        return Double(total) / Date().timeIntervalSince(start)
    }

    /// Time from sending a write to receiving its watch event on another connection.
    private static func watchLatency(_ path: String, _ events: Int) async throws -> Latency {
        let writer = try XenStoreClient(socketPath: path)
        let watcher = try XenStoreClient(socketPath: path)
        defer {
            writer.close()
            watcher.close()
        }
        let w = try await watcher.watch("/lat")
        var it = w.makeAsyncIterator()
        _ = await it.next()  // the registration event
        var samples: [Double] = []
        samples.reserveCapacity(events)
        for k in 0..<events {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try await writer.write("/lat/x", String(k))
            guard await it.next() != nil else { throw XenStoreError(.closed, "watch ended") }
            samples.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1000)
        }
        w.cancel()
        samples.sort()
        return Latency(
            samples: events, medianMicroseconds: samples[samples.count / 2],
            p99Microseconds: samples[min(samples.count - 1, samples.count * 99 / 100)])
    }
}
