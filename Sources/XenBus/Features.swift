import XenABI
import XenStore

/// Reading and writing a device's keys with defaults, the way Linux's `xenbus_read_unsigned`
/// does: a missing or malformed key yields the default (a peer's garbage is not an error
/// that stops the device; it is "feature absent").
extension XenStoreOperations {
    /// `dir/key` as an unsigned decimal, or `defaultValue` if missing or not a number.
    public func readUnsigned(_ dir: String, _ key: String, default defaultValue: UInt64) async throws(XenStoreError) -> UInt64 {
        guard let text = try await readIfPresent(dir + "/" + key), let v = UInt64(text) else { return defaultValue }
        return v
    }

    /// A key the peer must have written (a ring reference, an event channel):
    /// a decimal no larger than `limit`. Missing or malformed is an error that
    /// closes the device, never a default.
    public func readRequired(_ dir: String, _ key: String, limit: UInt64 = UInt64(UInt32.max)) async throws(XenStoreError) -> UInt64 {
        guard let text = try await readIfPresent(dir + "/" + key) else {
            throw XenStoreError(.noEntry, "\(dir)/\(key) is missing")
        }
        guard let v = UInt64(text), v <= limit else {
            throw XenStoreError(.invalid, "\(dir)/\(key) is not a number up to \(limit): \(text.prefix(32))")
        }
        return v
    }

    /// A `feature-*` flag: "1" is on, "0" off, anything else (or nothing) `defaultValue`.
    public func readFeature(_ dir: String, _ key: String, default defaultValue: Bool = false) async throws(XenStoreError) -> Bool {
        switch try await readIfPresent(dir + "/" + key) {
        case "1": true
        case "0": false
        default: defaultValue
        }
    }

    /// `dir/key` as text, or `defaultValue` if missing.
    public func readString(_ dir: String, _ key: String, default defaultValue: String) async throws(XenStoreError) -> String {
        try await readIfPresent(dir + "/" + key) ?? defaultValue
    }

    /// Writes a flag as "1" or "0".
    public func writeFeature(_ dir: String, _ key: String, _ on: Bool) async throws(XenStoreError) {
        try await write(dir + "/" + key, on ? "1" : "0")
    }

    /// Writes an unsigned decimal.
    public func writeUnsigned(_ dir: String, _ key: String, _ value: UInt64) async throws(XenStoreError) {
        try await write(dir + "/" + key, String(value))
    }

    /// The device's `state` key; nil if it is missing or not a XenbusState.
    public func readState(_ dir: String) async throws(XenStoreError) -> XenbusState? {
        guard let text = try await readIfPresent(dir + "/" + XenbusKey.state) else { return nil }
        return XenbusState(xenstoreValue: text)
    }

    /// Writes the device's `state` key.
    public func writeState(_ dir: String, _ state: XenbusState) async throws(XenStoreError) {
        try await write(dir + "/" + XenbusKey.state, state.xenstoreValue)
    }
}
