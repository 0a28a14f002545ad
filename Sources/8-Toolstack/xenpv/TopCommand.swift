import ArgumentParser
import Foundation
import XenABI
import XenBus
import XenStore

/// `xenpv top`: a live per-ring view of every backend publishing statistics
/// in the store (requests/s, ring fill, notifies and sleeps per request).
struct TopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "top", abstract: "Show each ring's activity, refreshed every interval.")

    @OptionGroup var store: StoreOptions

    @Option(help: "Seconds between refreshes.")
    var interval = 1.0

    @Option(help: "Stop after this many refreshes (0: until interrupted).")
    var count = 0

    func validate() throws {
        guard interval >= 0.1, interval <= 60 else { throw ValidationError("--interval must be 0.1 to 60 seconds") }
        guard count >= 0 else { throw ValidationError("--count must not be negative") }
    }

    func run() async throws {
        let client = try store.connect()
        var previous = try await sample(client)
        var shown = 0
        while count == 0 || shown < count {
            try await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            let current = try await sample(client)
            print(render(previous: previous, current: current))
            previous = current
            shown += 1
        }
    }

    /// Every published device: "dom0 vif 1/0" → its counters.
    private func sample(_ client: XenStoreClient) async throws -> [String: [String: UInt64]] {
        var out: [String: [String: UInt64]] = [:]
        for domain in (try? await client.directory("/local/domain")) ?? [] {
            guard let id = UInt16(domain) else { continue }
            let root = DeviceStatistics.root(of: DomainID(id))
            for type in (try? await client.directory(root)) ?? [] {
                for fe in (try? await client.directory(root + "/" + type)) ?? [] {
                    for dev in (try? await client.directory(root + "/\(type)/\(fe)")) ?? [] {
                        if let text = try? await client.read(root + "/\(type)/\(fe)/\(dev)") {
                            out["dom\(id) \(type) \(fe)/\(dev)"] = DeviceStatistics.decode(text)
                        }
                    }
                }
            }
        }
        return out
    }

    private func render(previous: [String: [String: UInt64]], current: [String: [String: UInt64]]) -> String {
        var lines = ["BACKEND DEVICE         REQ/S      MB/S  FILL      NOTIFY/REQ  SLEEP/REQ  DROPPED"]
        for key in current.keys.sorted() {
            let now = current[key]!, before = previous[key] ?? [:]
            func delta(_ name: String) -> Double { Double((now[name] ?? 0) &- (before[name] ?? 0)) }
            let requests = delta("requests")
            let perRequest = { (name: String) in requests > 0 ? String(format: "%.3f", delta(name) / requests) : "-" }
            lines.append(String(format: "%-22@ %9.0f %9.1f  %4llu/%-4llu %10@ %10@ %8llu",
                                key as NSString, requests / interval, delta("bytes") / interval / 1e6,
                                now["ring_fill"] ?? 0, now["ring_size"] ?? 0,
                                perRequest("notifies") as NSString, perRequest("sleeps") as NSString, now["dropped"] ?? 0))
        }
        if current.isEmpty { lines.append("(no backend publishes statistics in this store)") }
        return lines.joined(separator: "\n")
    }
}
