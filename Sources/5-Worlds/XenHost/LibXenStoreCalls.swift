import CXenLibs
import Glibc

extension LibXen {
    /// The libxenstore part of the funnel: each field one `xs_*` function with
    /// its C signature (transactions are `UInt32`, 0 for none).
    public struct Store: Sendable {
        /// An opaque `struct xs_handle *`.
        public typealias Handle = OpaquePointer
        /// `xs_open(0)`: nil on failure, with `errno` set.
        public var open: @Sendable () -> Handle?
        /// `xs_close`.
        public var close: @Sendable (Handle) -> Void
        /// `xs_read(handle, transaction, path, &length)`: a malloc'd value (free it with ``free``), or nil.
        public var read: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutableRawPointer?
        /// `xs_write(handle, transaction, path, data, length)`.
        public var write: @Sendable (Handle, UInt32, String, UnsafeRawBufferPointer) -> Bool
        /// `xs_directory(handle, transaction, path, &count)`: a malloc'd array of child names, or nil.
        public var directory: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        /// `xs_mkdir(handle, transaction, path)`.
        public var mkdir: @Sendable (Handle, UInt32, String) -> Bool
        /// `xs_rm(handle, transaction, path)`.
        public var rm: @Sendable (Handle, UInt32, String) -> Bool
        /// `xs_get_permissions(handle, transaction, path, &count)`: a malloc'd array, or nil.
        public var getPermissions: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<UInt32>) -> UnsafeMutablePointer<xs_permissions>?
        /// `xs_set_permissions(handle, transaction, path, permissions, count)`.
        public var setPermissions: @Sendable (Handle, UInt32, String, UnsafeMutablePointer<xs_permissions>, UInt32) -> Bool
        /// `xs_get_domain_path(handle, domid)`: a malloc'd path such as `/local/domain/3`, or nil.
        public var getDomainPath: @Sendable (Handle, UInt32) -> UnsafeMutablePointer<CChar>?
        /// `xs_watch(handle, path, token)`.
        public var watch: @Sendable (Handle, String, String) -> Bool
        /// `xs_unwatch(handle, path, token)`.
        public var unwatch: @Sendable (Handle, String, String) -> Bool
        /// `xs_fileno`: a descriptor readable when a watch has fired.
        public var fileno: @Sendable (Handle) -> Int32
        /// `xs_check_watch`: a malloc'd `{path, token}` pair for a fired watch, or nil when none is waiting.
        public var checkWatch: @Sendable (Handle) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        /// `xs_transaction_start`: the transaction id, 0 on failure.
        public var transactionStart: @Sendable (Handle) -> UInt32
        /// `xs_transaction_end(handle, transaction, abort)`: false with `errno` `EAGAIN` when a conflicting commit won.
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
