import CXen

/// Sizes from `io/xs_wire.h`.
public enum XenStoreLimits {
    /// `sizeof(struct xsd_sockmsg)`: type, req_id, tx_id, len.
    public static let headerSize = MemoryLayout<xsd_sockmsg>.size
    /// `XENSTORE_PAYLOAD_MAX`: "Violating this is very bad."
    public static let payloadMax = Int(XENSTORE_PAYLOAD_MAX)
    /// `XENSTORE_ABS_PATH_MAX`
    public static let absolutePathMax = Int(XENSTORE_ABS_PATH_MAX)
    /// `XENSTORE_REL_PATH_MAX`
    public static let relativePathMax = Int(XENSTORE_REL_PATH_MAX)
}

/// One xenstore message: the `struct xsd_sockmsg` header and its payload.
public struct XenStoreMessage: Hashable, Sendable, CustomStringConvertible {
    /// `type`: the request, or `XS_ERROR` / `XS_WATCH_EVENT` from the daemon. A reply carries
    /// its request's type.
    public var type: XenStoreMessageType
    /// `req_id`: chosen by the client, echoed in the reply.
    public var requestID: UInt32
    /// `tx_id`: 0 outside a transaction.
    public var transactionID: UInt32
    /// The bytes after the header; `len` on the wire is its count, at most
    /// `XENSTORE_PAYLOAD_MAX`. Usually NUL-terminated strings (see ``strings()``).
    public var payload: [UInt8]

    /// A message with `payload` as given (no NUL is added). The size is not checked here:
    /// the client and the decoder enforce `XENSTORE_PAYLOAD_MAX`.
    public init(type: XenStoreMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, payload: [UInt8]) {
        self.type = type
        self.requestID = requestID
        self.transactionID = transactionID
        self.payload = payload
    }

    /// A message whose payload is each string followed by a NUL (the usual form).
    public init(type: XenStoreMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, strings: [String]) {
        var bytes: [UInt8] = []
        for s in strings {
            bytes.append(contentsOf: s.utf8)
            bytes.append(0)
        }
        self.init(type: type, requestID: requestID, transactionID: transactionID, payload: bytes)
    }

    /// The header and payload as they go on the wire (host byte order, as Xen sends them).
    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(XenStoreLimits.headerSize + payload.count)
        appendEncoded(to: &out)
        return out
    }

    /// Appends the wire form to `out` without an intermediate array.
    public func appendEncoded(to out: inout [UInt8]) {
        for word in [type.rawValue, requestID, transactionID, UInt32(payload.count)] {
            withUnsafeBytes(of: word) { out.append(contentsOf: $0) }
        }
        out.append(contentsOf: payload)
    }

    /// The payload split at NULs: the NUL-terminated parts, and whatever follows the last NUL
    /// (`XS_WRITE`'s value is such a tail).
    public func nulSeparatedParts() -> (terminated: [[UInt8]], tail: [UInt8]) {
        var parts: [[UInt8]] = []
        var start = 0
        for (i, b) in payload.enumerated() where b == 0 {
            parts.append(Array(payload[start..<i]))
            start = i + 1
        }
        return (parts, Array(payload[start...]))
    }

    /// Exactly the NUL-terminated strings of the payload, nothing after the last NUL.
    /// Throws `EINVAL` for a payload that does not end in NUL, as Xen's daemon does.
    public func strings() throws(XenStoreError) -> [String] {
        let (parts, tail) = nulSeparatedParts()
        guard tail.isEmpty else { throw XenStoreError(.invalid, "\(type) payload is not NUL-terminated") }
        return parts.map { String(decoding: $0, as: UTF8.self) }
    }

    /// The payload as text, without one trailing NUL if present (replies like `XS_READ`'s carry none).
    public var text: String {
        var bytes = payload[...]
        if bytes.last == 0 { bytes = bytes.dropLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The header as one log line (`READ req=3 tx=0 len=12`); the payload is left out.
    public var description: String {
        "\(type) req=\(requestID) tx=\(transactionID) len=\(payload.count)"
    }
}

/// Splits a byte stream into messages, validating each header before trusting its length.
///
/// Bounded: it never holds more than one header plus `XENSTORE_PAYLOAD_MAX` bytes of a
/// message; a header announcing more is a protocol violation and the stream is unusable.
public struct XenStoreFrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var readIndex = 0

    /// A decoder with nothing buffered.
    public init() {}

    /// Bytes received but not yet returned as a message.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// How many more bytes make the next message complete (for readers that must not over-read).
    public var bytesWanted: Int {
        let have = bufferedByteCount
        if have < XenStoreLimits.headerSize { return XenStoreLimits.headerSize - have }
        let len = Int(loadWord(at: readIndex + 12))
        return max(0, XenStoreLimits.headerSize + min(len, XenStoreLimits.payloadMax) - have)
    }

    /// Adds bytes read from the stream, in order; they may split or join messages anywhere.
    /// Consumed bytes are dropped here, so the buffer does not grow with the stream.
    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if readIndex > 0 && readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex > 8192 {
            buffer.removeFirst(readIndex)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    private func loadWord(at offset: Int) -> UInt32 {
        buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }

    /// The next complete message, nil when more bytes are needed.
    /// Throws `EPROTO` for a length above `XENSTORE_PAYLOAD_MAX`; the caller must drop the stream.
    public mutating func next() throws(XenStoreError) -> XenStoreMessage? {
        guard bufferedByteCount >= XenStoreLimits.headerSize else { return nil }
        let type = loadWord(at: readIndex)
        let req = loadWord(at: readIndex + 4)
        let tx = loadWord(at: readIndex + 8)
        let len = loadWord(at: readIndex + 12)
        guard len <= UInt32(XenStoreLimits.payloadMax) else {
            throw XenStoreError(.protocolViolation, "message length \(len) exceeds XENSTORE_PAYLOAD_MAX")
        }
        let total = XenStoreLimits.headerSize + Int(len)
        guard bufferedByteCount >= total else { return nil }
        let start = readIndex + XenStoreLimits.headerSize
        let payload = Array(buffer[start..<(start + Int(len))])
        readIndex += total
        return XenStoreMessage(
            type: XenStoreMessageType(rawValue: type), requestID: req, transactionID: tx, payload: payload)
    }
}
