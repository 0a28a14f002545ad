import Dispatch

/// At most one log line per kind of event per interval, with a count of those held back:
/// a flood a client can cause (refused connections, accept failing with EMFILE) must not
/// turn into a flood of log lines.
struct LogThrottle {
    var interval: Double = 5
    private var last: [String: (at: UInt64, held: Int)] = [:]

    /// Whether to log `kind` now, and how many such events went unlogged since the last line.
    mutating func admit(_ kind: String) -> (log: Bool, held: Int) {
        let now = DispatchTime.now().uptimeNanoseconds
        if let entry = last[kind], Double(now - entry.at) / 1e9 < interval {
            last[kind] = (entry.at, entry.held + 1)
            return (false, 0)
        }
        let held = last[kind]?.held ?? 0
        last[kind] = (now, 0)
        return (true, held)
    }
}
