/// The block size constraints of an export (proto.md, "Block size constraints").
public struct NBDBlockSizeConstraints: Hashable, Sendable {
    /// The smallest length and alignment of a request.
    public var minimum: UInt32
    /// The size from which aligned requests are efficient.
    public var preferred: UInt32
    /// The largest length of one request (0xffffffff: no limit of its own).
    public var maximum: UInt32

    /// Constraints as given; ``validate(exportSize:)`` checks them.
    public init(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }

    /// Throws unless the constraints obey proto.md: the minimum a power of 2 no larger than
    /// 2^16; the preferred a power of 2 at least the smaller of the minimum and 4096; the
    /// maximum a multiple of the minimum (or 0xffffffff) and at least the smaller of the
    /// preferred size and the export's size.
    public func validate(exportSize: UInt64) throws(NBDProtocolError) {
        guard minimum != 0, minimum & (minimum - 1) == 0, minimum <= 1 << 16 else {
            throw NBDProtocolError(.badBlockSizes, "minimum block size \(minimum) is not a power of 2 up to 65536")
        }
        guard preferred != 0, preferred & (preferred - 1) == 0, preferred >= min(minimum, 4096) else {
            throw NBDProtocolError(.badBlockSizes, "preferred block size \(preferred) is not a power of 2 of at least min(\(minimum), 4096)")
        }
        guard maximum == .max || maximum % minimum == 0, UInt64(maximum) >= min(UInt64(preferred), exportSize) else {
            throw NBDProtocolError(.badBlockSizes, "maximum block size \(maximum) is not a multiple of \(minimum) at least min(\(preferred), \(exportSize))")
        }
    }
}

/// One information item of an `NBD_REP_INFO` reply.
public enum NBDInfo: Hashable, Sendable {
    /// `NBD_INFO_EXPORT`: the export's size and transmission flags (12 bytes).
    case export(size: UInt64, flags: NBDTransmissionFlags)
    /// `NBD_INFO_NAME`: the export's canonical name.
    case name(String)
    /// `NBD_INFO_DESCRIPTION`: a description for a person.
    case description(String)
    /// `NBD_INFO_BLOCK_SIZE`: the block size constraints (14 bytes).
    case blockSize(NBDBlockSizeConstraints)
    /// A type this module does not know, kept as its payload (clients must ignore it).
    case unknown(NBDInfoType, [UInt8])

    /// The information type.
    public var type: NBDInfoType {
        switch self {
        case .export: .export
        case .name: .name
        case .description: .description
        case .blockSize: .blockSize
        case .unknown(let t, _): t
        }
    }

    /// The reply's data: the 16-bit type, then the payload.
    public func encoded() throws(NBDProtocolError) -> [UInt8] {
        var w = NBDWireWriter(capacity: 16)
        w.integer(type.rawValue)
        switch self {
        case .export(let size, let flags):
            w.integer(size)
            w.integer(flags.rawValue)
        case .name(let s), .description(let s):
            let raw = Array(s.utf8)
            guard raw.count <= NBDLimits.maximumString, !raw.contains(0) else {
                throw NBDProtocolError(.badString, "information string of \(raw.count) bytes")
            }
            w.append(raw)
        case .blockSize(let c):
            w.integer(c.minimum)
            w.integer(c.preferred)
            w.integer(c.maximum)
        case .unknown(_, let payload):
            w.append(payload)
        }
        return w.bytes
    }

    /// Parses an `NBD_REP_INFO` reply's data, with each known type's exact length.
    public init(decoding data: [UInt8]) throws(NBDProtocolError) {
        var r = NBDWireReader(data)
        let type = NBDInfoType(rawValue: try r.integer(UInt16.self, field: "information type"))
        switch type {
        case .export:
            guard data.count == 12 else { throw NBDProtocolError(.inconsistentLength, "NBD_INFO_EXPORT of \(data.count) bytes, not 12") }
            let size = try r.integer(UInt64.self, field: "export size")
            self = .export(size: size, flags: NBDTransmissionFlags(rawValue: try r.integer(UInt16.self, field: "transmission flags")))
        case .name:
            self = .name(try r.string(r.remaining, field: "NBD_INFO_NAME"))
        case .description:
            self = .description(try r.string(r.remaining, field: "NBD_INFO_DESCRIPTION"))
        case .blockSize:
            guard data.count == 14 else { throw NBDProtocolError(.inconsistentLength, "NBD_INFO_BLOCK_SIZE of \(data.count) bytes, not 14") }
            let minimum = try r.integer(UInt32.self, field: "minimum block size")
            let preferred = try r.integer(UInt32.self, field: "preferred block size")
            self = .blockSize(NBDBlockSizeConstraints(minimum: minimum, preferred: preferred,
                                                      maximum: try r.integer(UInt32.self, field: "maximum block size")))
        default:
            self = .unknown(type, try r.bytes(r.remaining, field: "information payload"))
        }
    }
}
