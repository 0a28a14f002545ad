/// Little-endian fields read off a stream's bytes, each read checked against
/// what is left of the record.
struct MigrationReader {
    private let bytes: ArraySlice<UInt8>
    private(set) var position: Int
    let record: String

    init(_ bytes: ArraySlice<UInt8>, record: String) {
        self.bytes = bytes
        position = bytes.startIndex
        self.record = record
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, _ field: String) throws(MigrationStreamError) -> T {
        let width = MemoryLayout<T>.size
        guard width <= remaining else {
            throw MigrationStreamError(.truncated, "\(record): \(field): \(width) bytes wanted, \(remaining) left")
        }
        var value: T = 0
        for i in (position..<position + width).reversed() { value = value << 8 | T(bytes[i]) }
        position += width
        return value
    }

    mutating func bytes(_ count: Int, _ field: String) throws(MigrationStreamError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw MigrationStreamError(.truncated, "\(record): \(field): \(count) bytes wanted, \(remaining) left")
        }
        defer { position += count }
        return bytes[position..<position + count]
    }

    /// UTF-8 without NUL, at most `limit` bytes.
    mutating func string(_ count: Int, limit: Int, _ field: String) throws(MigrationStreamError) -> String {
        guard count <= limit else { throw MigrationStreamError(.tooLong, "\(record): \(field): \(count) bytes, more than \(limit)") }
        let raw = try bytes(count, field)
        guard !raw.contains(0), let text = String(validating: raw, as: UTF8.self) else {
            throw MigrationStreamError(.badValue, "\(record): \(field): not UTF-8 without NUL")
        }
        return text
    }

    /// A field the format reserves: zero.
    mutating func reserved<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, _ field: String) throws(MigrationStreamError) {
        guard try integer(type, field) == 0 else { throw MigrationStreamError(.badValue, "\(record): \(field) is reserved and not zero") }
    }

    /// `count` items of `size` bytes each must fit in what is left: checked
    /// before anything is allocated for them.
    func expect(_ count: Int, of size: Int, _ field: String) throws(MigrationStreamError) {
        guard count <= remaining / size else {
            throw MigrationStreamError(.inconsistentLength, "\(record): \(count) \(field) of \(size) bytes in \(remaining) bytes")
        }
    }

    func expectEnd() throws(MigrationStreamError) {
        guard remaining == 0 else { throw MigrationStreamError(.inconsistentLength, "\(record): \(remaining) bytes left over") }
    }
}

/// Little-endian fields appended.
struct MigrationWriter {
    var bytes: [UInt8] = []

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        var v = value
        for _ in 0..<MemoryLayout<T>.size {
            bytes.append(UInt8(truncatingIfNeeded: v))
            v >>= 8
        }
    }

    mutating func append<C: Collection<UInt8>>(_ data: C) { bytes.append(contentsOf: data) }

    /// A string's UTF-8 bytes, checked as a reader checks them.
    static func string(_ s: String, limit: Int, _ field: String) throws(MigrationStreamError) -> [UInt8] {
        let raw = Array(s.utf8)
        guard raw.count <= limit else { throw MigrationStreamError(.tooLong, "\(field): \(raw.count) bytes, more than \(limit)") }
        guard !raw.contains(0) else { throw MigrationStreamError(.badValue, "\(field): contains NUL") }
        return raw
    }
}
