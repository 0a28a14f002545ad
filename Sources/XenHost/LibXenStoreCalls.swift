import CXenLibs
import Glibc

extension LibXen {
    /// The libxenstore part of the funnel: each field one `xs_*` function with
    /// its C signature (transactions are `UInt32`, 0 for none).
    public struct Store: Sendable {
        public typealias Handle = OpaquePointer
        public var open: @Sendable () -> Handle?
        public var close: @Sendable (Handle) -> Void
        public var read: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutableRawPointer?
        public var write: @Sendable (Handle, UInt32, String, UnsafeRawBufferPointer) -> Bool
        public var directory: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        public var mkdir: @Sendable (Handle, UInt32, String) -> Bool
        public var rm: @Sendable (Handle, UInt32, String) -> Bool
        public var getPermissions: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutablePointer<xs_permissions>?
        public var setPermissions: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<xs_permissions>, UInt32) -> Bool
        public var getDomainPath: @Sendable (Handle, UInt32) -> UnsafeMutablePointer<CChar>?
        public var watch: @Sendable (Handle, String, String) -> Bool
        public var unwatch: @Sendable (Handle, String, String) -> Bool
        public var fileno: @Sendable (Handle) -> Int32
        public var checkWatch: @Sendable (Handle) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        public var transactionStart: @Sendable (Handle) -> UInt32
        public var transactionEnd: @Sendable (Handle, UInt32, Bool) -> Bool
        /// Frees what libxenstore returned (it allocates with malloc).
        public var free: @Sendable (UnsafeMutableRawPointer?) -> Void

        /// The real libxenstore. It honours `XENSTORED_PATH` when it opens.
        public static let system = Store(
            open: { xs_open(0) },
            close: { xs_close($0) },
            read: { xs_read($0, $1, $2, $3) },
            write: { h, t, path, data in xs_write(h, t, path, data.baseAddress, UInt32(data.count)) },
            directory: { xs_directory($0, $1, $2, $3) },
            mkdir: { xs_mkdir($0, $1, $2) },
            rm: { xs_rm($0, $1, $2) },
            getPermissions: { xs_get_permissions($0, $1, $2, $3) },
            setPermissions: { xs_set_permissions($0, $1, $2, $3, $4) },
            getDomainPath: { xs_get_domain_path($0, $1) },
            watch: { xs_watch($0, $1, $2) },
            unwatch: { xs_unwatch($0, $1, $2) },
            fileno: { xs_fileno($0) },
            checkWatch: { xs_check_watch($0) },
            transactionStart: { xs_transaction_start($0) },
            transactionEnd: { xs_transaction_end($0, $1, $2) },
            free: { Glibc.free($0) }
        )
    }
}
