import Logging
import XenStore

#if canImport(Glibc)
import Glibc
#endif

/// The write end of the pipe the signal handler pokes; a signal handler can capture nothing.
nonisolated(unsafe) private var signalPipeWrite: Int32 = -1

extension XenStoreServer {
    /// Runs a server on `socketPath` in the foreground until SIGTERM or SIGINT, then stops it
    /// cleanly (connections closed, socket file removed) and returns the signal number.
    /// For `xenpv xenstored --socket PATH`.
    @discardableResult
    public static func runForeground(
        socketPath: String, quotas: XenStoreQuotas = XenStoreQuotas(), logger: Logger = Logger(label: "xenstored"),
        group: gid_t? = nil
    ) throws(XenStoreError) -> Int32 {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw Sys.fail("pipe") }
        defer {
            close(fds[0])
            close(fds[1])
        }
        signalPipeWrite = fds[1]
        // Only write(2) in the handler: it is async-signal-safe.
        let handler: @convention(c) (Int32) -> Void = { sig in
            var b = UInt8(truncatingIfNeeded: sig)
            _ = write(signalPipeWrite, &b, 1)
        }
        let oldTerm = signal(SIGTERM, handler)
        let oldInt = signal(SIGINT, handler)
        defer {
            signal(SIGTERM, oldTerm)
            signal(SIGINT, oldInt)
            signalPipeWrite = -1
        }
        let server = XenStoreServer(socketPath: socketPath, quotas: quotas, logger: logger, group: group)
        try server.start()
        var sig: UInt8 = 0
        while read(fds[0], &sig, 1) < 0 && errno == EINTR {}
        logger.info("signal \(sig): stopping")
        server.stop()
        return Int32(sig)
    }
}
