#if canImport(Glibc)
import Glibc
#endif

/// How a client reaches the store: a byte stream carrying `xs_wire.h` messages.
public protocol XenStoreTransport: Sendable {
    /// Sends bytes, all or an error.
    func send(_ bytes: [UInt8]) throws(XenStoreError)
    /// Blocks until bytes arrive; 0 at the end of the stream.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int
    /// Ends the stream in both directions, waking a blocked `receive`.
    func shutdown()
}

/// The Unix stream socket transport (`XENSTORED_PATH`).
public final class XenStoreSocketTransport: XenStoreTransport {
    private let fd: Int32

    /// Connects a blocking stream socket to the daemon listening at `socketPath`; a client
    /// on xenstored's socket speaks for dom0.
    ///
    /// Throws `EINVAL` for a path longer than `sun_path`, `ECONNRESET` when the connection is
    /// refused or the socket file is missing, `ESYSTEM` when no socket can be created.
    public init(socketPath: String) throws(XenStoreError) {
        fd = try Sys.connect(to: socketPath)
    }

    /// Takes over an already connected stream socket (for example one end of a
    /// `socketpair` a hypervisor daemon passed over `SCM_RIGHTS`); closes it on deinit.
    public init(connectedSocket fd: Int32) {
        self.fd = fd
    }

    deinit { close(fd) }

    /// Writes all of `bytes`, blocking while the socket buffer is full and retrying on
    /// `EINTR`; never raises `SIGPIPE`. Throws `ECONNRESET` when the peer has gone.
    public func send(_ bytes: [UInt8]) throws(XenStoreError) { try Sys.sendAll(fd, bytes) }

    /// Blocks in `recv(2)` until bytes arrive; returns 0 at end of stream (the daemon closed
    /// it, or ``shutdown()``). Throws `ECONNRESET` on any other failure.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw XenStoreError(.closed, "recv: \(Sys.errnoText)")
        }
    }

    /// `shutdown(2)` in both directions: a blocked `receive` returns 0. The descriptor is
    /// closed only when the transport is released.
    public func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
}
