/// A request of the transmission phase (28 bytes; a write's data follows it).
public struct NBDRequest: Hashable, Sendable {
    /// Bytes on the wire.
    public static let size = 28
    /// The command flags.
    public var flags: NBDCommandFlags
    /// The command.
    public var command: NBDCommand
    /// The client's handle, echoed in the reply.
    public var handle: UInt64
    /// The first byte of the export the request touches.
    public var offset: UInt64
    /// Bytes touched (and, for a write, bytes of data that follow).
    public var length: UInt32

    /// A request as given.
    public init(flags: NBDCommandFlags = [], command: NBDCommand, handle: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.command = command
        self.handle = handle
        self.offset = offset
        self.length = length
    }

    /// The 28 bytes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: Self.size)
        w.integer(NBDMagic.request)
        w.integer(flags.rawValue)
        w.integer(command.rawValue)
        w.integer(handle)
        w.integer(offset)
        w.integer(length)
        return w.bytes
    }

    /// Parses a header; only the magic is checked here (the server checks the rest
    /// against its export and answers with an error, which a bad magic cannot get).
    public init(decoding bytes: [UInt8]) throws(NBDProtocolError) {
        var r = NBDWireReader(bytes)
        let magic = try r.integer(UInt32.self, field: "request magic")
        guard magic == NBDMagic.request else {
            throw NBDProtocolError(.badMagic, "request magic 0x\(String(magic, radix: 16)), not 0x25609513")
        }
        flags = NBDCommandFlags(rawValue: try r.integer(UInt16.self, field: "command flags"))
        command = NBDCommand(rawValue: try r.integer(UInt16.self, field: "command"))
        handle = try r.integer(UInt64.self, field: "handle")
        offset = try r.integer(UInt64.self, field: "offset")
        length = try r.integer(UInt32.self, field: "length")
        try r.expectEnd(field: "request")
    }
}

/// A simple reply: magic, error, handle (16 bytes; a successful read's data follows).
public struct NBDSimpleReply: Hashable, Sendable {
    /// Bytes on the wire.
    public static let size = 16
    /// The error (``NBDErrno/ok`` on success).
    public var error: NBDErrno
    /// The request's handle.
    public var handle: UInt64

    /// A reply to `handle` with `error`.
    public init(error: NBDErrno = .ok, handle: UInt64) {
        self.error = error
        self.handle = handle
    }

    /// The 16 bytes.
    public func encoded() -> [UInt8] {
        var w = NBDWireWriter(capacity: Self.size)
        w.integer(NBDMagic.simpleReply)
        w.integer(error.rawValue)
        w.integer(handle)
        return w.bytes
    }

    /// Writes the 16 bytes into `buffer` (at least 16 bytes), for a sender that keeps its own buffer.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.size, "a simple reply needs 16 bytes")
        buffer.storeBytes(of: NBDMagic.simpleReply.bigEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: error.rawValue.bigEndian, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: handle.bigEndian, toByteOffset: 8, as: UInt64.self)
    }

    /// Parses a reply header (a client's side).
    public init(decoding bytes: [UInt8]) throws(NBDProtocolError) {
        var r = NBDWireReader(bytes)
        let magic = try r.integer(UInt32.self, field: "reply magic")
        guard magic == NBDMagic.simpleReply else {
            throw NBDProtocolError(.badMagic, "reply magic 0x\(String(magic, radix: 16)), not 0x67446698")
        }
        error = NBDErrno(rawValue: try r.integer(UInt32.self, field: "error"))
        handle = try r.integer(UInt64.self, field: "handle")
        try r.expectEnd(field: "simple reply")
    }
}
