import XenABI
import XenStore

/// Reading a device's keys through ``XenstoreValue``, each with its range.
///
/// Unlike Linux's `xenbus_read_unsigned`, a present but malformed or out-of-range value is
/// an error (``XenstoreValueError``), never the default: the peer wrote it on purpose, and
/// quietly substituting a default would serve a device the peer did not ask for. Only a
/// missing optional key yields its default. Store failures come through as `XenStoreError`.
extension XenStoreOperations {
    /// `dir/key` as an unsigned decimal in `range`; `defaultValue` if missing, or
    /// ``XenstoreValueError/Code/missing`` if there is none.
    public func readNumber<T: FixedWidthInteger & UnsignedInteger>(
        _ dir: String, _ key: String, in range: ClosedRange<T>, default defaultValue: T? = nil
    ) async throws -> T {
        try await readValue(dir, key, default: defaultValue, expected: "a decimal in \(range)") { text, path throws(XenstoreValueError) in
            try XenstoreValue.decimal(text, key: path, in: range)
        }
    }

    /// A `feature-*` flag: "1" on, "0" off, missing `defaultValue`; anything else an error.
    public func readFeature(_ dir: String, _ key: String, default defaultValue: Bool = false) async throws -> Bool {
        try await readValue(dir, key, default: defaultValue, expected: "0 or 1", XenstoreValue.flag)
    }

    /// One of `names`; `defaultValue` if missing.
    public func readChoice(_ dir: String, _ key: String, among names: [String], default defaultValue: String? = nil) async throws -> String {
        try await readValue(dir, key, default: defaultValue, expected: "one of \(names.joined(separator: ", "))") { text, path throws(XenstoreValueError) in
            try XenstoreValue.choice(text, key: path, among: names)
        }
    }

    /// A grant reference the peer must have written.
    public func readGrantRef(_ dir: String, _ key: String) async throws -> GrantRef {
        try await readValue(dir, key, default: nil, expected: "a grant reference", XenstoreValue.grantRef)
    }

    /// A ring's grant references: `ring-ref` for a one-page ring, else `ring-ref0` …
    /// `ring-ref<pageCount-1>` (`io/blkif.h`, multi-page rings).
    public func readRingRefs(_ dir: String, pageCount: Int) async throws -> [GrantRef] {
        if pageCount == 1 { return [try await readGrantRef(dir, XenbusKey.ringRef)] }
        var refs: [GrantRef] = []
        for i in 0..<pageCount { refs.append(try await readGrantRef(dir, "\(XenbusKey.ringRef)\(i)")) }
        return refs
    }

    /// An event channel port the peer must have written.
    public func readEventPort(_ dir: String, _ key: String) async throws -> EventPort {
        try await readValue(dir, key, default: nil, expected: "an event channel port", XenstoreValue.eventPort)
    }

    /// An event channel port the peer may have written; nil if missing.
    public func readEventPortIfPresent(_ dir: String, _ key: String) async throws -> EventPort? {
        let absent: EventPort?? = .some(nil)
        return try await readValue(dir, key, default: absent, expected: "an event channel port") { text, path throws(XenstoreValueError) -> EventPort? in
            try XenstoreValue.eventPort(text, key: path)
        }
    }

    /// A domain id the toolstack wrote (`backend-id`, `frontend-id`).
    public func readDomainID(_ dir: String, _ key: String) async throws -> DomainID {
        try await readValue(dir, key, default: nil, expected: "a domain id", XenstoreValue.domainID)
    }

    /// A `mac` key's six bytes; nil if missing.
    public func readMAC(_ dir: String, _ key: String) async throws -> [UInt8]? {
        let path = dir + "/" + key
        guard let text = try await readIfPresent(path) else { return nil }
        return try XenstoreValue.macAddress(text, key: path)
    }

    /// The device's `state` key; nil if missing, ``XenstoreValueError`` if not a XenbusState.
    public func readState(_ dir: String) async throws -> XenbusState? {
        let path = dir + "/" + XenbusKey.state
        guard let text = try await readIfPresent(path) else { return nil }
        return try XenstoreValue.state(text, key: path)
    }

    /// `dir/key` through `parse`, or `defaultValue` if missing (an error if there is none).
    public func readValue<T>(
        _ dir: String, _ key: String, default defaultValue: T?, expected: String,
        _ parse: (String, String) throws(XenstoreValueError) -> T
    ) async throws -> T {
        let path = dir + "/" + key
        guard let text = try await readIfPresent(path) else {
            guard let defaultValue else { throw XenstoreValueError(.missing, key: path, value: nil, expected: expected) }
            return defaultValue
        }
        return try parse(text, path)
    }

    /// Writes a flag as "1" or "0".
    public func writeFeature(_ dir: String, _ key: String, _ on: Bool) async throws(XenStoreError) {
        try await write(dir + "/" + key, on ? "1" : "0")
    }

    /// Reads every path that exists (nil for one that does not), with all the requests in
    /// flight at once: one round trip for the lot. Each path's outcome, in `paths`' order.
    public func readAllIfPresent(_ paths: [String]) async -> [Result<String?, XenStoreError>] {
        await withTaskGroup(of: (Int, Result<String?, XenStoreError>).self) { group in
            for (i, path) in paths.enumerated() {
                group.addTask { (i, await readOutcome(path)) }
            }
            var read = [Result<String?, XenStoreError>](repeating: .success(nil), count: paths.count)
            for await (i, result) in group { read[i] = result }
            return read
        }
    }

    // The catches of typed errors live in these functions, not in closures (task
    // groups', transactions'): in a task group's closure, Swift 6.3.1's optimizer
    // garbled the tuple the child returned (an index of 115 among 4 paths crashed
    // `xenpv backend` in release).

    /// The value at `path` (nil where there is none), or the error reading it met.
    func readOutcome(_ path: String) async -> Result<String?, XenStoreError> {
        do throws(XenStoreError) { return .success(try await readIfPresent(path)) } catch { return .failure(error) }
    }

    /// The error writing `value` at `path` met, if any.
    func writeOutcome(_ path: String, _ value: String) async -> XenStoreError? {
        do throws(XenStoreError) { try await write(path, value) } catch { return error }
        return nil
    }

    /// Writes every `(path, value)` with all the requests in flight at once: one round trip
    /// for the lot instead of one each (the store serves a connection's requests in order;
    /// inside a transaction they still commit together). Throws the first failure in
    /// `entries`' order, after every request was answered.
    public func writeAll(_ entries: [(String, String)]) async throws(XenStoreError) {
        let failures = await withTaskGroup(of: (Int, XenStoreError?).self) { group in
            for (i, (path, value)) in entries.enumerated() {
                group.addTask { (i, await writeOutcome(path, value)) }
            }
            var failures: [(Int, XenStoreError)] = []
            for await (i, error) in group { if let error { failures.append((i, error)) } }
            return failures
        }
        if let first = failures.min(by: { $0.0 < $1.0 }) { throw first.1 }
    }

    /// Writes an unsigned decimal.
    public func writeUnsigned(_ dir: String, _ key: String, _ value: UInt64) async throws(XenStoreError) {
        try await write(dir + "/" + key, String(value))
    }

    /// Writes the device's `state` key.
    public func writeState(_ dir: String, _ state: XenbusState) async throws(XenStoreError) {
        try await write(dir + "/" + XenbusKey.state, state.xenstoreValue)
    }
}
