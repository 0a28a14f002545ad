import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import XenStore
import XenStoreServer

/// Throughput and watch latency over the Unix socket, for `xenpv bench xenstore`.
/// Each client is one connection issuing requests back to back
/// (one outstanding request each), so figures include a full round trip per operation.
public enum XenStoreBenchmark {
    /// Operations per second with a given number of concurrent clients.
    public struct Throughput: Sendable, CustomStringConvertible {
        /// Client connections issuing requests at once, each on its own node.
        public var clients: Int
        /// `XS_READ` requests completed per second, all clients together.
        public var reads: Double
        /// `XS_WRITE` requests completed per second, all clients together.
        public var writes: Double
        /// One line: the client count and both rates, rounded down.
        public var description: String {
            "\(clients) client(s): \(Int(reads)) reads/s, \(Int(writes)) writes/s"
        }
    }

    /// How long a write takes to reach another connection's watch, over many writes.
    public struct Latency: Sendable, CustomStringConvertible {
        /// Writes timed, one event each.
        public var samples: Int
        /// The median time, in microseconds, from sending a write to holding its watch event.
        public var medianMicroseconds: Double
        /// The 99th-percentile time, in microseconds.
        public var p99Microseconds: Double
        /// One line: the sample count, median and p99.
        public var description: String {
            "watch event latency over \(samples) events: median \(Int(medianMicroseconds)) µs, p99 \(Int(p99Microseconds)) µs"
        }
    }

    /// What ``run(clientCounts:seconds:events:idle:)`` measured.
    public struct Report: Sendable, CustomStringConvertible {
        /// One entry per client count, in the order asked.
        public var throughput: [Throughput]
        /// The watch-event latency, measured after the throughput runs.
        public var latency: Latency
        /// Connections held open, silent, while the throughput was measured.
        public var idleConnections = 0
        /// One line per measurement, preceded by the idle-connection count if any.
        public var description: String {
            ((idleConnections > 0 ? ["with \(idleConnections) idle connections:"] : [])
                + throughput.map(\.description) + [latency.description]).joined(separator: "\n")
        }
    }

    /// The cost of a transaction's first write in a store of `nodes` nodes, on the engine
    /// alone (no socket): what one such write takes of the single store thread.
    public struct TransactionCost: Sendable, CustomStringConvertible {
        /// Leaf nodes seeded before measuring (the store also holds their parents).
        public var nodes: Int
        /// Transactions timed, each with one first write.
        public var samples: Int
        /// The median time of the first write, in microseconds.
        public var medianMicroseconds: Double
        /// One line: store size, median and sample count.
        public var description: String {
            "first write of a transaction in a \(nodes)-node store: median \(String(format: "%.1f", medianMicroseconds)) µs over \(samples)"
        }
    }

    /// Seeds an engine with `nodes` leaves (100 per directory), then times `samples`
    /// transactions' first `XS_WRITE`, each aborted afterwards; runs on the calling thread.
    /// Throws `EINVAL` for a negative `nodes` or a `samples` below 1 (there would be no
    /// median), `EIO` if `XS_TRANSACTION_START` fails.
    public static func transactionFirstWrite(nodes: Int = 30000, samples: Int = 200) throws -> TransactionCost {
        guard nodes >= 0 else { throw XenStoreError(.invalid, "nodes must not be negative (got \(nodes))") }
        guard samples >= 1 else { throw XenStoreError(.invalid, "samples must be at least 1 (got \(samples))") }
        let engine = XenStoreEngine()
        for i in 0..<nodes {
            _ = engine.perform(XenStoreMessage(type: .write, strings: ["/big/\(i / 100)/\(i % 100)"]), as: .dom0)
        }
        let id = engine.connect(domain: .dom0)
        var times: [Double] = []
        for k in 0..<samples {
            engine.handle(XenStoreMessage(type: .transactionStart, strings: [""]), from: id)
            guard let tx = engine.takeOutbox().first.map({ UInt32($0.message.text) ?? 0 }), tx != 0 else {
                throw XenStoreError(.io, "TRANSACTION_START failed")
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            engine.handle(XenStoreMessage(type: .write, transactionID: tx, strings: ["/tx/\(k)"]), from: id)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1000)
            engine.handle(XenStoreMessage(type: .transactionEnd, transactionID: tx, strings: ["F"]), from: id)
            _ = engine.takeOutbox()
        }
        times.sort()
        return TransactionCost(nodes: nodes, samples: samples, medianMicroseconds: times[times.count / 2])
    }

    /// Opens `count` connections that never send anything (raising the fd limit as needed);
    /// they stay open until the returned array is closed.
    static func idleConnections(_ count: Int, to path: String) throws -> [Int32] {
        var lim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        let want = rlim_t(count * 2 + 256)
        if lim.rlim_cur < want {
            lim.rlim_cur = min(want, lim.rlim_max)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        }
        var fds: [Int32] = []
        for _ in 0..<count { fds.append(try Sys.connect(to: path)) }
        return fds
    }

    /// Starts a server on a temporary socket and measures: reads and writes per second with
    /// each client count, for `seconds` each, and watch latency over `events` writes.
    /// Throws `EINVAL`, before measuring anything, for `events` or any client count below 1,
    /// `seconds` not above 0, or a negative `idle`.
    public static func run(
        clientCounts: [Int] = [1, 8], seconds: Double = 2, events: Int = 2000, idle: Int = 0
    ) async throws -> Report {
        guard events >= 1 else { throw XenStoreError(.invalid, "events must be at least 1 (got \(events))") }
        guard seconds.isFinite, seconds > 0 else { throw XenStoreError(.invalid, "seconds must be above 0 (got \(seconds))") }
        guard idle >= 0 else { throw XenStoreError(.invalid, "idle connections must not be negative (got \(idle))") }
        guard clientCounts.allSatisfy({ $0 >= 1 }) else {
            throw XenStoreError(.invalid, "client counts must be at least 1 (got \(clientCounts))")
        }
        let path = "/tmp/xs-bench-\(getpid()).sock"
        var logger = Logger(label: "xenstored-bench")
        logger.logLevel = .error
        let server = XenStoreServer(socketPath: path, quotas: benchQuotas(idle: idle), logger: logger)
        try server.start()
        defer { server.stop() }
        let idleFDs = try idleConnections(idle, to: path)
        defer { idleFDs.forEach { close($0) } }
        var results: [Throughput] = []
        for n in clientCounts {
            let clients = try (0..<n).map { _ in try XenStoreClient(socketPath: path) }
            defer { clients.forEach { $0.close() } }
            for (i, c) in clients.enumerated() { try await c.write("/bench/\(i)", "value-\(i)") }
            let writes = try await measure(clients, seconds) { c, i, k in try await c.write("/bench/\(i)", "v\(k)") }
            let reads = try await measure(clients, seconds) { c, i, _ in _ = try await c.read("/bench/\(i)") }
            results.append(Throughput(clients: n, reads: reads, writes: writes))
        }
        return Report(throughput: results, latency: try await watchLatency(path, events), idleConnections: idle)
    }

    /// Default quotas, with room for the idle connections the run holds open.
    static func benchQuotas(idle: Int) -> XenStoreQuotas {
        var q = XenStoreQuotas()
        q.connections = max(q.connections, idle + 64)
        q.connectionsPerUser = max(q.connectionsPerUser, idle + 64)
        return q
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
        guard events >= 1 else { throw XenStoreError(.invalid, "events must be at least 1 (got \(events))") }
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
