/// Reads big-endian fields off a peer's bytes, each read checked against what is left.
public struct NBDWireReader {
    private let bytes: [UInt8]
    /// Where the next field starts.
    public private(set) var position: Int

    /// Reads `bytes` from the start.
    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.position = 0
    }

    /// Bytes not yet read.
    public var remaining: Int { bytes.count - position }

    /// The next `count` bytes.
    public mutating func bytes(_ count: Int, field: String) throws(NBDProtocolError) -> [UInt8] {
        guard count >= 0, count <= remaining else {
            throw NBDProtocolError(.truncated, "\(field): \(count) bytes wanted, \(remaining) left")
        }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// The next big-endian integer of `T`'s width.
    public mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, field: String) throws(NBDProtocolError) -> T {
        let width = MemoryLayout<T>.size
        guard width <= remaining else {
            throw NBDProtocolError(.truncated, "\(field): \(width) bytes wanted, \(remaining) left")
        }
        var value: T = 0
        for i in position..<position + width { value = value << 8 | T(bytes[i]) }
        position += width
        return value
    }

    /// A protocol string of `count` bytes: UTF-8, no NUL, at most ``NBDLimits/maximumString`` bytes.
    public mutating func string(_ count: Int, field: String) throws(NBDProtocolError) -> String {
        guard count <= NBDLimits.maximumString else {
            throw NBDProtocolError(.badString, "\(field): \(count) bytes, more than \(NBDLimits.maximumString)")
        }
        let raw = try bytes(count, field: field)
        guard !raw.contains(0), let text = String(validating: raw, as: UTF8.self) else {
            throw NBDProtocolError(.badString, "\(field): not UTF-8 without NUL")
        }
        return text
    }

    /// Throws unless every byte was read.
    public func expectEnd(field: String) throws(NBDProtocolError) {
        guard remaining == 0 else { throw NBDProtocolError(.inconsistentLength, "\(field): \(remaining) bytes left over") }
    }
}

/// Appends big-endian fields.
public struct NBDWireWriter {
    /// What was written so far.
    public private(set) var bytes: [UInt8] = []

    /// Starts empty, with room for `capacity` bytes.
    public init(capacity: Int = 32) { bytes.reserveCapacity(capacity) }

    /// Appends `value` in network byte order.
    public mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends raw bytes.
    public mutating func append(_ raw: some Sequence<UInt8>) { bytes.append(contentsOf: raw) }
}

/// The bounds this module holds peers to.
public enum NBDLimits {
    /// proto.md: a string "MUST be no longer than 4096 bytes".
    public static let maximumString = 4096
    /// The most option data a server reads: the longest option this module parses (`NBD_OPT_GO`
    /// with a 4096-byte name and every information type) fits with room to spare.
    public static let maximumOptionData: UInt32 = 16 << 10
}
