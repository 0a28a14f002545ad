import Logging
import XenLocks

/// A log handler that keeps the lines at error level and above, so a test counts
/// attempts by their log lines instead of by time.
public final class LogLines: LogHandler, @unchecked Sendable {
    // @unchecked: `stored` is guarded by its lock; the handler's settings are set once.
    private let stored = Locked<[String]>([])
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .error

    public init() {}

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        stored.withLock { $0.append("\(event.message)") }
    }

    public var lines: [String] { stored.withLock { $0 } }
    public func count(containing text: String) -> Int { lines.filter { $0.contains(text) }.count }
}
