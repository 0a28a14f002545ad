import SystemPackage
import XenABI

/// Why an export could not start listening.
public struct BlockExportError: CodedError {
    /// What went wrong.
    public enum Code: Hashable, Sendable {
        /// The address is not `unix:PATH` or `tcp:HOST:PORT`.
        case badAddress
        /// The device has no geometry (not connected) or one no NBD client can use.
        case badDevice
        /// A socket call failed.
        case system
    }

    /// What went wrong.
    public var code: Code
    /// The address or call that failed.
    public var message: String
    /// The errno or socket error behind it.
    public var underlying: (any Error)?

    /// Creates an error with `code`, a `message`, and its cause.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    static func system(_ call: String, _ errno: Int32) -> BlockExportError {
        BlockExportError(.system, call, underlying: Errno(rawValue: errno))
    }
}

/// Where an export listens: a Unix socket's path or a TCP host and port.
public enum BlockExportAddress: Hashable, Sendable, CustomStringConvertible {
    /// A Unix stream socket at a path (created mode 0600; a stale socket is replaced).
    case unix(String)
    /// TCP on a host (name or address) and port (0: any free port).
    case tcp(host: String, port: UInt16)

    /// Parses `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6).
    public init(parsing text: String) throws(BlockExportError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw BlockExportError(.badAddress, "unix: needs a path") }
            self = .unix(path)
        } else if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":") else { throw BlockExportError(.badAddress, "\(text): tcp:HOST:PORT") }
            var host = String(rest[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty, let port = UInt16(rest[rest.index(after: colon)...]) else {
                throw BlockExportError(.badAddress, "\(text): tcp:HOST:PORT with a port of 0 to 65535")
            }
            self = .tcp(host: host, port: port)
        } else {
            throw BlockExportError(.badAddress, "\(text.debugDescription) is neither unix:PATH nor tcp:HOST:PORT")
        }
    }

    /// `unix:PATH` or `tcp:HOST:PORT`.
    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }

    /// The URI libnbd and QEMU take (`nbd+unix:///?socket=PATH`, `nbd://HOST:PORT/`).
    public var uri: String {
        switch self {
        case .unix(let path): "nbd+unix:///?socket=\(path)"
        case .tcp(let host, let port): host.contains(":") ? "nbd://[\(host)]:\(port)/" : "nbd://\(host):\(port)/"
        }
    }
}
