/// The stream's framing: a header, then records, each checked on its own.
///
/// ```
/// header  "XENPVMIG"  version u32 (1)  page size u32 (4096)  flags u32 (0)  CRC-32C u32 of the 20 bytes before
/// record  type u32  body length u32  body  CRC-32C u32 of type, length and body
/// ```
///
/// Every integer is little-endian. A receiver reads the 8-byte record header,
/// refuses a length above ``MigrationLimits/maximumRecordBody`` before it buffers
/// the body, and checks the checksum before it decodes a field. The first record
/// is ``MigrationRecord/domain(_:)``, the last ``MigrationRecord/end``, after which
/// nothing may follow; between them any number of the others, in any order.
public enum MigrationStream {
    /// `XENPVMIG`.
    public static let magic: [UInt8] = Array("XENPVMIG".utf8)
    /// The version this module writes and reads.
    public static let version: UInt32 = 1
    /// Bytes of the header.
    public static let headerSize = 24
    /// Bytes of a record's framing around its body (type, length, checksum).
    public static let recordOverhead = 12

    /// The header of a version-1 stream.
    public static func header() -> [UInt8] {
        var w = MigrationWriter()
        w.append(magic)
        w.integer(version)
        w.integer(UInt32(MigrationLimits.pageSize))
        w.integer(UInt32(0))
        w.integer(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// One record, framed and checksummed; throws for a value no decoder would take.
    public static func encode(_ record: MigrationRecord) throws(MigrationStreamError) -> [UInt8] {
        let body = try record.body()
        var w = MigrationWriter()
        w.bytes.reserveCapacity(body.count + recordOverhead)
        w.integer(record.type.rawValue)
        w.integer(UInt32(body.count))
        w.append(body)
        w.integer(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    /// A whole stream: the header and `records`, which must start with a domain
    /// record and end with ``MigrationRecord/end`` (`.badOrder` otherwise).
    public static func encode(_ records: [MigrationRecord]) throws(MigrationStreamError) -> [UInt8] {
        guard case .domain = records.first, records.last == .end else {
            throw MigrationStreamError(.badOrder, "a stream starts with a domain record and ends with an end record")
        }
        var out = header()
        for r in records { out += try encode(r) }
        return out
    }

    /// Decodes a whole stream held in memory: every record, the end included.
    /// Bytes missing, left over after the end record, or failing any check throw.
    public static func decode(_ bytes: [UInt8]) throws(MigrationStreamError) -> [MigrationRecord] {
        var decoder = MigrationStreamDecoder()
        decoder.feed(bytes)
        var records: [MigrationRecord] = []
        while let r = try decoder.next() { records.append(r) }
        try decoder.finish()
        return records
    }
}

/// Decodes a stream as its bytes arrive (from a socket or a file), one record at a time.
///
/// ``feed(_:)`` what was read, then call ``next()`` until it returns nil (it needs
/// more bytes); ``finish()`` at the end of input says whether the stream was whole.
/// A length above the limits is refused as soon as its header is in, so a hostile
/// sender cannot make the decoder buffer more than one maximal record. After an
/// error the decoder stays failed.
public struct MigrationStreamDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    private var sawHeader = false
    private var sawDomain = false
    private var ended = false
    private var failure: MigrationStreamError?

    /// A decoder expecting a stream's header.
    public init() {}

    /// True once the end record was decoded.
    public var isFinished: Bool { ended }

    /// Bytes buffered and not yet decoded.
    public var buffered: Int { buffer.count - start }

    /// Adds bytes read from the stream.
    public mutating func feed<C: Collection<UInt8>>(_ bytes: C) {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole record, or nil when more bytes are needed (or the stream
    /// ended). Throws at the first thing wrong, and again on every later call.
    public mutating func next() throws(MigrationStreamError) -> MigrationRecord? {
        if let failure { throw failure }
        do throws(MigrationStreamError) {
            return try step()
        } catch {
            failure = error
            throw error
        }
    }

    /// Throws unless the stream ended with its end record and nothing after it.
    public func finish() throws(MigrationStreamError) {
        if let failure { throw failure }
        guard ended else {
            throw MigrationStreamError(.truncated, "the stream stopped before its end record (\(buffered) bytes of a record pending)")
        }
        guard buffered == 0 else { throw MigrationStreamError(.badOrder, "\(buffered) bytes after the end record") }
    }

    private mutating func step() throws(MigrationStreamError) -> MigrationRecord? {
        if ended {
            guard buffered == 0 else { throw MigrationStreamError(.badOrder, "\(buffered) bytes after the end record") }
            return nil
        }
        if !sawHeader {
            // The magic is checked as soon as its bytes are in: a wrong stream fails early.
            let have = min(buffered, MigrationStream.magic.count)
            guard buffer[start..<start + have].elementsEqual(MigrationStream.magic.prefix(have)) else {
                throw MigrationStreamError(.badMagic, "the stream does not start with XENPVMIG")
            }
            guard buffered >= MigrationStream.headerSize else { return nil }
            var r = MigrationReader(buffer[start..<start + MigrationStream.headerSize], record: "header")
            _ = try r.bytes(8, "magic")
            let version = try r.integer(UInt32.self, "version")
            let pageSize = try r.integer(UInt32.self, "page size")
            let flags = try r.integer(UInt32.self, "flags")
            let crc = try r.integer(UInt32.self, "checksum")
            guard crc == CRC32C.checksum(Array(buffer[start..<start + 20])) else {
                throw MigrationStreamError(.badChecksum, "header: checksum mismatch")
            }
            guard version == MigrationStream.version else {
                throw MigrationStreamError(.unsupportedVersion, "header: version \(version), this decoder reads \(MigrationStream.version)")
            }
            guard pageSize == UInt32(MigrationLimits.pageSize) else { throw MigrationStreamError(.badValue, "header: page size \(pageSize)") }
            guard flags == 0 else { throw MigrationStreamError(.badValue, "header: unknown flags \(flags)") }
            start += MigrationStream.headerSize
            sawHeader = true
        }
        guard buffered >= 8 else { return nil }
        var h = MigrationReader(buffer[start..<start + 8], record: "record header")
        let typeNumber = try h.integer(UInt32.self, "type")
        let length = try h.integer(UInt32.self, "length")
        guard let type = MigrationRecordType(rawValue: typeNumber) else {
            throw MigrationStreamError(.unknownRecord, "record type \(typeNumber)")
        }
        guard length <= UInt32(MigrationLimits.maximumRecordBody) else {
            throw MigrationStreamError(.tooLong, "\(type) record: \(length) bytes, more than \(MigrationLimits.maximumRecordBody)")
        }
        let total = 8 + Int(length) + 4
        guard buffered >= total else { return nil }
        let framed = buffer[start..<start + 8 + Int(length)]
        var c = MigrationReader(buffer[(start + 8 + Int(length))..<(start + total)], record: "\(type) record")
        let crc = try c.integer(UInt32.self, "checksum")
        let computed = framed.withContiguousStorageIfAvailable { CRC32C.update(0, UnsafeRawBufferPointer($0)) }
            ?? CRC32C.checksum(Array(framed))
        guard crc == computed else { throw MigrationStreamError(.badChecksum, "\(type) record: checksum mismatch") }
        let record = try MigrationRecord.decode(type: type, body: buffer[(start + 8)..<(start + 8 + Int(length))])
        switch record {
        case .domain:
            guard !sawDomain else { throw MigrationStreamError(.badOrder, "a second domain record") }
            sawDomain = true
        case .end:
            guard sawDomain else { throw MigrationStreamError(.badOrder, "an end record before the domain record") }
            ended = true
        default:
            guard sawDomain else { throw MigrationStreamError(.badOrder, "a \(type) record before the domain record") }
        }
        start += total
        return record
    }
}
