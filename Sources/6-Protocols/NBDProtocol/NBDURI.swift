/// Where an NBD export is, as libnbd and QEMU write it: `nbd://HOST[:PORT]/EXPORT` over
/// TCP (port 10809 by default) or `nbd+unix:///EXPORT?socket=PATH` over a Unix socket.
///
/// Only these two forms are accepted: TLS (`nbds://`), vsock, `nbd+ssh` and query
/// parameters other than `socket` are refused with a message saying so, rather than
/// served insecurely or half-understood. The export name is percent-decoded.
public struct NBDURI: Hashable, Sendable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Hashable, Sendable {
        /// A TCP host (a name, an IPv4 address, or an IPv6 address without brackets) and port.
        case tcp(host: String, port: UInt16)
        /// A Unix stream socket's absolute path.
        case unix(path: String)
    }

    /// NBD's IANA port.
    public static let defaultPort: UInt16 = 10809

    /// Where the server listens.
    public var endpoint: Endpoint
    /// The export's name ("" for the server's default export).
    public var exportName: String

    /// An address as given.
    public init(endpoint: Endpoint, exportName: String) {
        self.endpoint = endpoint
        self.exportName = exportName
    }

    /// Whether `text` looks like an NBD URI at all (its scheme starts with `nbd`), so a
    /// caller can tell a URI to check from a path.
    public static func looksLikeURI(_ text: String) -> Bool {
        text.hasPrefix("nbd:") || text.hasPrefix("nbd+") || text.hasPrefix("nbds")
    }

    /// Parses `text`.
    /// - Throws: ``NBDProtocolError`` `.badString` naming what is wrong.
    public init(parsing text: String) throws(NBDProtocolError) {
        func bad(_ why: String) -> NBDProtocolError {
            let shown = text.count > 200 ? String(text.prefix(200)) + "…" : text
            return NBDProtocolError(.badString, "NBD URI \(shown.debugDescription): \(why)")
        }
        guard text.utf8.count <= NBDLimits.maximumString, !text.utf8.contains(0) else { throw bad("too long or contains NUL") }
        guard let schemeEnd = text.firstRange(of: "://") else { throw bad("no scheme (nbd:// or nbd+unix://)") }
        let scheme = String(text[..<schemeEnd.lowerBound])
        var rest = Substring(text[schemeEnd.upperBound...])
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: q)...]
            rest = rest[..<q]
        }
        if rest.contains("#") { throw bad("fragments are not supported") }
        let authority: Substring
        let path: Substring
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        } else {
            authority = rest
            path = ""
        }
        let name = try Self.percentDecoded(path, bad)
        switch scheme {
        case "nbd", "nbd+tcp":
            guard query.isEmpty else { throw bad("query parameters are not supported over TCP") }
            guard !authority.isEmpty else { throw bad("no host") }
            if authority.contains("@") { throw bad("user names are not supported") }
            var host = authority
            var portText: Substring? = nil
            if host.hasPrefix("[") {
                guard let close = host.firstIndex(of: "]") else { throw bad("unclosed IPv6 bracket") }
                let after = host[host.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { throw bad("junk after the IPv6 address") }
                    portText = after.dropFirst()
                }
                host = host[host.index(after: host.startIndex)..<close]
            } else if let colon = host.lastIndex(of: ":") {
                portText = host[host.index(after: colon)...]
                host = host[..<colon]
            }
            guard !host.isEmpty else { throw bad("no host") }
            var port = Self.defaultPort
            if let portText {
                guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                    let p = UInt16(portText), p != 0
                else { throw bad("port \(String(portText).debugDescription) is not a number in 1...65535") }
                port = p
            }
            self.init(endpoint: .tcp(host: String(host), port: port), exportName: name)
        case "nbd+unix":
            guard authority.isEmpty else { throw bad("nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)") }
            var socket: String? = nil
            for item in query.split(separator: "&", omittingEmptySubsequences: true) {
                guard item.hasPrefix("socket=") else { throw bad("query parameter \(String(item).debugDescription) is not supported") }
                guard socket == nil else { throw bad("more than one socket=") }
                socket = try Self.percentDecoded(item.dropFirst("socket=".count), bad)
            }
            guard let socket, !socket.isEmpty else { throw bad("no socket=PATH") }
            guard socket.hasPrefix("/") else { throw bad("socket=\(socket.debugDescription) is not an absolute path") }
            // sockaddr_un.sun_path holds 108 bytes including the NUL.
            guard socket.utf8.count < 108 else { throw bad("socket path longer than 107 bytes") }
            self.init(endpoint: .unix(path: socket), exportName: name)
        case "nbds", "nbds+unix", "nbds+tcp":
            throw bad("TLS (nbds) is not supported")
        default:
            throw bad("scheme \(scheme.debugDescription) is not nbd:// or nbd+unix://")
        }
    }

    /// The URI in its canonical form (the export name percent-encoded where needed).
    public var description: String {
        let name = Self.percentEncoded(exportName)
        switch endpoint {
        case .tcp(let host, let port):
            let h = host.contains(":") ? "[\(host)]" : host
            return "nbd://\(h)\(port == Self.defaultPort ? "" : ":\(port)")/\(name)"
        case .unix(let path):
            return "nbd+unix:///\(name)?socket=\(Self.percentEncoded(path))"
        }
    }

    static func percentDecoded(_ text: Substring, _ bad: (String) -> NBDProtocolError) throws(NBDProtocolError) -> String {
        var out: [UInt8] = []
        var bytes = text.utf8.makeIterator()
        while let b = bytes.next() {
            guard b == UInt8(ascii: "%") else {
                out.append(b)
                continue
            }
            guard let h = bytes.next(), let l = bytes.next(), let hi = hexValue(h), let lo = hexValue(l) else {
                throw bad("a % is not followed by two hex digits")
            }
            out.append(hi << 4 | lo)
        }
        guard out.count <= NBDLimits.maximumString, !out.contains(0), let s = String(validating: out, as: UTF8.self) else {
            throw bad("the decoded text is not UTF-8 without NUL")
        }
        return s
    }

    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            let c = Character(Unicode.Scalar(b))
            if b < 0x80, c.isLetter || c.isNumber || "-._~/".contains(c) {
                out.append(c)
            } else {
                out += "%" + String(b >> 4, radix: 16, uppercase: true) + String(b & 15, radix: 16, uppercase: true)
            }
        }
        return out
    }
}
