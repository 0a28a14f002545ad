/// The server's first message: `NBDMAGIC`, `IHAVEOPT`, the handshake flags (18 bytes).
public struct NBDServerGreeting: Hashable, Sendable {
    /// Bytes on the wire.
    public static let size = 18
    /// The handshake flags offered.
    public var flags: NBDHandshakeFlags

    /// A greeting offering `flags`.
    public init(flags: NBDHandshakeFlags) { self.flags = flags }

    /// The 18 bytes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: Self.size)
        w.integer(NBDMagic.initPassword)
        w.integer(NBDMagic.option)
        w.integer(flags.rawValue)
        return w.bytes
    }

    /// Parses a server's greeting (a client's side), refusing oldstyle and foreign magics.
    public init(decoding bytes: [UInt8]) throws(NBDProtocolError) {
        var r = NBDWireReader(bytes)
        guard try r.integer(UInt64.self, field: "INIT_PASSWD") == NBDMagic.initPassword else {
            throw NBDProtocolError(.badMagic, "the greeting does not start with NBDMAGIC")
        }
        guard try r.integer(UInt64.self, field: "IHAVEOPT") == NBDMagic.option else {
            throw NBDProtocolError(.badMagic, "not a newstyle greeting (no IHAVEOPT)")
        }
        flags = NBDHandshakeFlags(rawValue: try r.integer(UInt16.self, field: "handshake flags"))
        try r.expectEnd(field: "greeting")
    }
}

/// The client's answer to the greeting: its 32 flags (4 bytes).
public struct NBDClientGreeting: Hashable, Sendable {
    /// Bytes on the wire.
    public static let size = 4
    /// The flags the client set.
    public var flags: NBDClientFlags

    /// An answer with `flags`.
    public init(flags: NBDClientFlags) { self.flags = flags }

    /// The 4 bytes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: Self.size)
        w.integer(flags.rawValue)
        return w.bytes
    }

    /// Parses the client's flags; proto.md: the server MUST drop a client that sets a flag
    /// it does not know or one the server did not offer (`offered`).
    public init(decoding bytes: [UInt8], offered: NBDHandshakeFlags) throws(NBDProtocolError) {
        var r = NBDWireReader(bytes)
        let raw = try r.integer(UInt32.self, field: "client flags")
        try r.expectEnd(field: "client flags")
        let f = NBDClientFlags(rawValue: raw)
        guard f.subtracting(.known).isEmpty else {
            throw NBDProtocolError(.unknownFlags, "client flags 0x\(String(raw, radix: 16)) set bits proto.md does not define")
        }
        if f.contains(.noZeroes) && !offered.contains(.noZeroes) {
            throw NBDProtocolError(.unknownFlags, "NBD_FLAG_C_NO_ZEROES without NBD_FLAG_NO_ZEROES offered")
        }
        flags = f
    }
}

/// The header of an option request: `IHAVEOPT`, the option, the data's length (16 bytes).
public struct NBDOptionHeader: Hashable, Sendable {
    /// Bytes on the wire.
    public static let size = 16
    /// The option.
    public var option: NBDOption
    /// Bytes of option data that follow.
    public var length: UInt32

    /// A header for `option` with `length` bytes of data.
    public init(option: NBDOption, length: UInt32) {
        self.option = option
        self.length = length
    }

    /// The 16 bytes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: Self.size)
        w.integer(NBDMagic.option)
        w.integer(option.rawValue)
        w.integer(length)
        return w.bytes
    }

    /// Parses a header; a length over `maximumLength` is refused before any data is read.
    public init(decoding bytes: [UInt8], maximumLength: UInt32 = NBDLimits.maximumOptionData) throws(NBDProtocolError) {
        var r = NBDWireReader(bytes)
        guard try r.integer(UInt64.self, field: "option magic") == NBDMagic.option else {
            throw NBDProtocolError(.badMagic, "an option request does not start with IHAVEOPT")
        }
        option = NBDOption(rawValue: try r.integer(UInt32.self, field: "option"))
        length = try r.integer(UInt32.self, field: "option length")
        try r.expectEnd(field: "option header")
        guard length <= maximumLength else {
            throw NBDProtocolError(.tooLong, "\(option) carries \(length) bytes of data, more than \(maximumLength)")
        }
    }
}

/// An option reply: magic, the option answered, the reply type, the data (20 bytes + data).
public struct NBDOptionReply: Hashable, Sendable {
    /// Bytes of the header on the wire.
    public static let headerSize = 20
    /// The option this answers.
    public var option: NBDOption
    /// `NBD_REP_ACK`, `NBD_REP_INFO`, an error…
    public var type: NBDOptionReplyType
    /// The reply's data (an information item, an export's name, an error message).
    public var data: [UInt8]

    /// A reply of `type` to `option` carrying `data`.
    public init(option: NBDOption, type: NBDOptionReplyType, data: [UInt8] = []) {
        self.option = option
        self.type = type
        self.data = data
    }

    /// An error reply with `message` for a person (cut to ``NBDLimits/maximumString`` bytes).
    public static func error(_ type: NBDOptionReplyType, to option: NBDOption, _ message: String) -> NBDOptionReply {
        NBDOptionReply(option: option, type: type, data: Array(message.utf8.prefix(NBDLimits.maximumString)))
    }

    /// Header and data; the data's length must fit the 32-bit length field.
    public func encoded() throws(NBDProtocolError) -> [UInt8] {
        guard let length = UInt32(exactly: data.count) else {
            throw NBDProtocolError(.tooLong, "option reply data of \(data.count) bytes")
        }
        var w = NBDWireWriter(capacity: Self.headerSize + data.count)
        w.integer(NBDMagic.optionReply)
        w.integer(option.rawValue)
        w.integer(type.rawValue)
        w.integer(length)
        w.append(data)
        return w.bytes
    }

    /// Parses the 20-byte header (a client's side): the option, the type, the data's length,
    /// refused above `maximumLength`.
    public static func decodeHeader(_ bytes: [UInt8], maximumLength: UInt32 = NBDLimits.maximumOptionData)
        throws(NBDProtocolError) -> (option: NBDOption, type: NBDOptionReplyType, length: UInt32)
    {
        var r = NBDWireReader(bytes)
        guard try r.integer(UInt64.self, field: "option reply magic") == NBDMagic.optionReply else {
            throw NBDProtocolError(.badMagic, "an option reply does not start with 0x3e889045565a9")
        }
        let option = NBDOption(rawValue: try r.integer(UInt32.self, field: "option"))
        let type = NBDOptionReplyType(rawValue: try r.integer(UInt32.self, field: "reply type"))
        let length = try r.integer(UInt32.self, field: "reply length")
        try r.expectEnd(field: "option reply header")
        guard length <= maximumLength else { throw NBDProtocolError(.tooLong, "option reply of \(length) bytes") }
        return (option, type, length)
    }
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless
/// both sides agreed to `NO_ZEROES`.
public struct NBDExportNameReply: Hashable, Sendable {
    /// The export's size in bytes.
    public var size: UInt64
    /// Its transmission flags.
    public var flags: NBDTransmissionFlags
    /// Leave out the 124 zero bytes (`NBD_FLAG_C_NO_ZEROES` negotiated).
    public var noZeroes: Bool

    /// The reply for an export of `size` bytes with `flags`.
    public init(size: UInt64, flags: NBDTransmissionFlags, noZeroes: Bool) {
        self.size = size
        self.flags = flags
        self.noZeroes = noZeroes
    }

    /// 10 bytes, or 134 with the zeroes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: 134)
        w.integer(size)
        w.integer(flags.rawValue)
        if !noZeroes { w.append(repeatElement(UInt8(0), count: 124)) }
        return w.bytes
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the information asked for.
public struct NBDInfoRequest: Hashable, Sendable {
    /// The export's name ("" for the default export).
    public var name: String
    /// The information types asked for, in the client's order.
    public var requests: [NBDInfoType]

    /// A request for `name` asking for `requests`.
    public init(name: String, requests: [NBDInfoType]) {
        self.name = name
        self.requests = requests
    }

    /// Parses option data: the name's length must leave room for the count, and the count
    /// must match the bytes that follow exactly.
    public init(decoding data: [UInt8]) throws(NBDProtocolError) {
        var r = NBDWireReader(data)
        let nameLength = try r.integer(UInt32.self, field: "name length")
        guard data.count >= 6, UInt64(nameLength) <= UInt64(data.count - 6) else {
            throw NBDProtocolError(.inconsistentLength, "name length \(nameLength) in \(data.count) bytes of option data")
        }
        name = try r.string(Int(nameLength), field: "export name")
        let count = try r.integer(UInt16.self, field: "information request count")
        guard r.remaining == Int(count) * 2 else {
            throw NBDProtocolError(.inconsistentLength, "\(count) information requests in \(r.remaining) bytes")
        }
        var list: [NBDInfoType] = []
        for _ in 0..<count { list.append(NBDInfoType(rawValue: try r.integer(UInt16.self, field: "information request"))) }
        requests = list
    }

    /// The option data.
    public func encoded() throws(NBDProtocolError) -> [UInt8] {
        let raw = Array(name.utf8)
        guard raw.count <= NBDLimits.maximumString, !raw.contains(0) else {
            throw NBDProtocolError(.badString, "export name of \(raw.count) bytes")
        }
        guard let count = UInt16(exactly: requests.count) else {
            throw NBDProtocolError(.tooLong, "\(requests.count) information requests")
        }
        var w = NBDWireWriter(capacity: 6 + raw.count + 2 * requests.count)
        w.integer(UInt32(raw.count))
        w.append(raw)
        w.integer(count)
        for t in requests { w.integer(t.rawValue) }
        return w.bytes
    }
}
