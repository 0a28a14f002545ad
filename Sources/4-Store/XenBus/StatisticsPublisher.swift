import XenABI
import XenStore

/// Publishes backends' counters in the store once a second, for `xenpv top`
/// in any process. One node per device under
/// `/local/domain/<backend>/xenpv-stats/<type>/<frontend>/<id>`, holding
/// `name=value` pairs separated by spaces. They live outside the backend
/// directories so the writes wake no handshake watch.
public enum DeviceStatistics {
    /// The root under which `domain`'s backends publish.
    public static func root(of domain: DomainID) -> String { XenStorePath.home(of: domain) + "/xenpv-stats" }

    /// `name=value` pairs as one node value.
    public static func encode(_ values: [(String, UInt64)]) -> String {
        values.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    }

    /// The pairs of a published value; malformed pairs are skipped.
    public static func decode(_ text: String) -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        for pair in text.split(separator: " ") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, let v = try? XenstoreValue.decimal(String(kv[1]), key: String(kv[0]), in: 0...UInt64.max) {
                out[String(kv[0])] = v
            }
        }
        return out
    }

    /// Writes `snapshot()`'s nodes every `interval` seconds until cancelled,
    /// removing nodes of devices that went away.
    public static func publish(to store: any XenStoreConnection, root: String, interval: Double = 1,
                               snapshot: @Sendable () -> [(path: String, values: [(String, UInt64)])]) async {
        var published: Set<String> = []
        while !Task.isCancelled {
            let now = snapshot()
            for (path, values) in now { try? await store.write(root + "/" + path, encode(values)) }
            let current = Set(now.map(\.path))
            for gone in published.subtracting(current) { try? await store.rm(root + "/" + gone) }
            published = current
            try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
        }
        for path in published { try? await store.rm(root + "/" + path) }
    }
}
