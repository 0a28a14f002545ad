/// What one side counted during a run.
public struct RingSideStatistics: Sendable, Hashable {
    /// Pushes of its producer index.
    public var pushes: UInt64 = 0
    /// Pushes that said the peer must be notified.
    public var notifies: UInt64 = 0
    /// Times it slept on its event channel.
    public var sleeps: UInt64 = 0
    /// CPU time of its thread during the run (`CLOCK_THREAD_CPUTIME_ID`).
    public var cpuSeconds: Double = 0

    /// Statistics with every count at zero.
    public init() {}
}

/// The figures of one run, with the keys of ringbench's `-j` output.
public struct RingBenchmarkResult: Sendable {
    /// The configuration the run used.
    public var configuration: RingBenchmarkConfiguration
    /// Entries in the ring; `queueDepth` as used (clamped to it).
    public var ringEntries: UInt32
    /// The queue depth as used: the configured one, clamped to ``ringEntries`` (0 meaning the ring).
    public var queueDepth: UInt32
    /// Wall time from the frontend's first request to its last response.
    public var elapsedSeconds: Double
    /// What the frontend thread counted.
    public var front: RingSideStatistics
    /// What the backend thread counted.
    public var back: RingSideStatistics
    /// The backend's CPU seconds during the idle probe and the probe's length.
    public var idleBackCPUSeconds: Double?
    /// The idle probe's wall-clock length in seconds; nil without a probe.
    public var idleSeconds: Double?
    /// Sum of sector numbers and grant references the backend read.
    public var checksum: UInt64

    /// Requests exchanged per second of ``elapsedSeconds``.
    public var requestsPerSecond: Double { Double(configuration.requests) / elapsedSeconds }
    /// Wall-clock nanoseconds per request (the inverse of ``requestsPerSecond``).
    public var nanosecondsPerRequest: Double { elapsedSeconds * 1e9 / Double(configuration.requests) }
    /// Notifications sent by both sides per request.
    public var notifiesPerRequest: Double { Double(front.notifies + back.notifies) / Double(configuration.requests) }
    /// Sleeps of both sides per request.
    public var sleepsPerRequest: Double { Double(front.sleeps + back.sleeps) / Double(configuration.requests) }

    /// One JSON object; the keys ringbench `-j` prints, plus a few more.
    public var json: String {
        var s = "{\"implementation\": \"swift\", \"mode\": \"\(configuration.mode.rawValue)\", "
        s += "\"requests\": \(configuration.requests), \"queue_depth\": \(queueDepth), \"ring_entries\": \(ringEntries), "
        s += "\"requests_per_second\": \(fixed(requestsPerSecond, 0)), \"ns_per_request\": \(fixed(nanosecondsPerRequest, 2)), "
        s += "\"notifies_per_request\": \(fixed(notifiesPerRequest, 4)), \"sleeps_per_request\": \(fixed(sleepsPerRequest, 4)), "
        s += "\"front_cpu_s\": \(fixed(front.cpuSeconds, 3)), \"back_cpu_s\": \(fixed(back.cpuSeconds, 3))"
        if configuration.mode == .adaptive { s += ", \"spin_ns\": \(configuration.spinNanoseconds)" }
        if let idleBackCPUSeconds, let idleSeconds {
            s += ", \"idle_s\": \(fixed(idleSeconds, 3)), \"idle_back_cpu_s\": \(fixed(idleBackCPUSeconds, 6))"
        }
        return s + "}"
    }

    /// One human-readable line, like ringbench without `-j`.
    public var summary: String {
        var s = "mode=\(configuration.mode.rawValue) N=\(configuration.requests) qd=\(queueDepth) ring=\(ringEntries) "
        s += "time_s=\(fixed(elapsedSeconds, 4)) req_per_s=\(fixed(requestsPerSecond, 0)) ns_per_req=\(fixed(nanosecondsPerRequest, 2)) "
        s += "notifies_per_req=\(fixed(notifiesPerRequest, 4)) sleeps_per_req=\(fixed(sleepsPerRequest, 4)) | "
        s += "front: pushes=\(front.pushes) notifies=\(front.notifies) sleeps=\(front.sleeps) cpu_s=\(fixed(front.cpuSeconds, 3)) | "
        s += "back: pushes=\(back.pushes) notifies=\(back.notifies) sleeps=\(back.sleeps) cpu_s=\(fixed(back.cpuSeconds, 3))"
        if let idleBackCPUSeconds, let idleSeconds {
            s += " | idle: \(fixed(idleSeconds, 3)) s, backend cpu \(fixed(idleBackCPUSeconds * 1e3, 3)) ms"
        }
        return s
    }
}

/// `value` with `digits` decimals, without Foundation.
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0 ..< digits { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = UInt64(scaled / scale)
    let frac = UInt64(scaled - Double(whole) * scale)
    var f = String(frac)
    while f.count < digits { f = "0" + f }
    return (value < 0 ? "-" : "") + String(whole) + (digits > 0 ? "." + f : "")
}
