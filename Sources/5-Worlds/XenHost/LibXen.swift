import CXenLibs
import Glibc

/// The one funnel every libxen call of the real-Xen world goes through.
///
/// Each field is one C function of `libxengnttab` / `libxenevtchn`, with the
/// C signature. `LibXen.system` calls the real libraries; tests pass a
/// scripted table to check call sequences and inject failures, as
/// swift-system diverts its syscalls. Failures report `errno` like the C
/// calls do, read through `errno()` so a fake can set it too.
public struct LibXen: Sendable {
    /// An opaque library handle (`xengnttab_handle *`, `xengntshr_handle *`, `xenevtchn_handle *`).
    public typealias Handle = OpaquePointer

    /// Reads the calling thread's `errno` after a failed call; a fake returns the error it scripted.
    public var errno: @Sendable () -> Int32

    // libxengnttab: mapping side
    /// `xengnttab_open(NULL, 0)`: nil on failure, with `errno` set.
    public var gnttabOpen: @Sendable () -> Handle?
    /// `xengnttab_close`: 0 on success.
    public var gnttabClose: @Sendable (Handle) -> Int32
    /// `xengnttab_map_domain_grant_refs(handle, count, domid, refs, prot)`: the address of `count` contiguous pages, or nil.
    public var gnttabMapDomainGrantRefs: @Sendable (Handle, UInt32, UInt32, UnsafeMutablePointer<UInt32>, Int32) -> UnsafeMutableRawPointer?
    /// `xengnttab_unmap(handle, address, count)`: 0 on success.
    public var gnttabUnmap: @Sendable (Handle, UnsafeMutableRawPointer, UInt32) -> Int32
    /// `xengnttab_grant_copy(handle, count, segments)`: 0 when the call ran; each segment carries its own status.
    public var gnttabGrantCopy: @Sendable (Handle, UInt32, UnsafeMutablePointer<xengnttab_grant_copy_segment>) -> Int32

    // libxengnttab: sharing side
    /// `xengntshr_open(NULL, 0)`: nil on failure, with `errno` set.
    public var gntshrOpen: @Sendable () -> Handle?
    /// `xengntshr_close`: 0 on success.
    public var gntshrClose: @Sendable (Handle) -> Int32
    /// `xengntshr_share_pages(handle, domid, count, refs, writable)`: the address of `count` new pages, their references written to `refs`, or nil.
    public var gntshrSharePages: @Sendable (Handle, UInt32, Int32, UnsafeMutablePointer<UInt32>, Int32) -> UnsafeMutableRawPointer?
    /// `xengntshr_unshare(handle, address, count)`: 0 on success.
    public var gntshrUnshare: @Sendable (Handle, UnsafeMutableRawPointer, UInt32) -> Int32

    // libxenevtchn
    /// `xenevtchn_open(NULL, 0)`: nil on failure, with `errno` set.
    public var evtchnOpen: @Sendable () -> Handle?
    /// `xenevtchn_close`: 0 on success.
    public var evtchnClose: @Sendable (Handle) -> Int32
    /// `xenevtchn_fd`: the handle's pollable descriptor.
    public var evtchnFd: @Sendable (Handle) -> Int32
    /// `xenevtchn_notify(handle, port)`: 0 on success.
    public var evtchnNotify: @Sendable (Handle, UInt32) -> Int32
    /// `xenevtchn_bind_unbound_port(handle, domid)`: the new local port, or -1.
    public var evtchnBindUnbound: @Sendable (Handle, UInt32) -> Int32
    /// `xenevtchn_bind_interdomain(handle, domid, remote_port)`: the new local port, or -1.
    public var evtchnBindInterdomain: @Sendable (Handle, UInt32, UInt32) -> Int32
    /// `xenevtchn_pending`: the next pending port, or -1 with `errno` `EAGAIN` when none (the descriptor is non-blocking).
    public var evtchnPending: @Sendable (Handle) -> Int32
    /// `xenevtchn_unmask(handle, port)`: 0 on success.
    public var evtchnUnmask: @Sendable (Handle, UInt32) -> Int32
    /// `xenevtchn_unbind(handle, port)`: 0 on success.
    public var evtchnUnbind: @Sendable (Handle, UInt32) -> Int32

    /// libxenstore.
    public var store: Store = .system

    /// A funnel from one closure per C function, for tests that script the libraries; ``store`` starts as ``Store/system``.
    public init(
        errno: @escaping @Sendable () -> Int32,
        gnttabOpen: @escaping @Sendable () -> Handle?,
        gnttabClose: @escaping @Sendable (Handle) -> Int32,
        gnttabMapDomainGrantRefs: @escaping @Sendable (Handle, UInt32, UInt32, UnsafeMutablePointer<UInt32>, Int32) -> UnsafeMutableRawPointer?,
        gnttabUnmap: @escaping @Sendable (Handle, UnsafeMutableRawPointer, UInt32) -> Int32,
        gnttabGrantCopy: @escaping @Sendable (Handle, UInt32, UnsafeMutablePointer<xengnttab_grant_copy_segment>) -> Int32,
        gntshrOpen: @escaping @Sendable () -> Handle?,
        gntshrClose: @escaping @Sendable (Handle) -> Int32,
        gntshrSharePages: @escaping @Sendable (Handle, UInt32, Int32, UnsafeMutablePointer<UInt32>, Int32) -> UnsafeMutableRawPointer?,
        gntshrUnshare: @escaping @Sendable (Handle, UnsafeMutableRawPointer, UInt32) -> Int32,
        evtchnOpen: @escaping @Sendable () -> Handle?,
        evtchnClose: @escaping @Sendable (Handle) -> Int32,
        evtchnFd: @escaping @Sendable (Handle) -> Int32,
        evtchnNotify: @escaping @Sendable (Handle, UInt32) -> Int32,
        evtchnBindUnbound: @escaping @Sendable (Handle, UInt32) -> Int32,
        evtchnBindInterdomain: @escaping @Sendable (Handle, UInt32, UInt32) -> Int32,
        evtchnPending: @escaping @Sendable (Handle) -> Int32,
        evtchnUnmask: @escaping @Sendable (Handle, UInt32) -> Int32,
        evtchnUnbind: @escaping @Sendable (Handle, UInt32) -> Int32
    ) {
        self.errno = errno
        self.gnttabOpen = gnttabOpen
        self.gnttabClose = gnttabClose
        self.gnttabMapDomainGrantRefs = gnttabMapDomainGrantRefs
        self.gnttabUnmap = gnttabUnmap
        self.gnttabGrantCopy = gnttabGrantCopy
        self.gntshrOpen = gntshrOpen
        self.gntshrClose = gntshrClose
        self.gntshrSharePages = gntshrSharePages
        self.gntshrUnshare = gntshrUnshare
        self.evtchnOpen = evtchnOpen
        self.evtchnClose = evtchnClose
        self.evtchnFd = evtchnFd
        self.evtchnNotify = evtchnNotify
        self.evtchnBindUnbound = evtchnBindUnbound
        self.evtchnBindInterdomain = evtchnBindInterdomain
        self.evtchnPending = evtchnPending
        self.evtchnUnmask = evtchnUnmask
        self.evtchnUnbind = evtchnUnbind
    }

    /// The real libraries.
    public static let system = LibXen(
        errno: { Glibc.errno },
        gnttabOpen: { xengnttab_open(nil, 0) },
        gnttabClose: { xengnttab_close($0) },
        gnttabMapDomainGrantRefs: { xengnttab_map_domain_grant_refs($0, $1, $2, $3, $4) },
        gnttabUnmap: { xengnttab_unmap($0, $1, $2) },
        gnttabGrantCopy: { xengnttab_grant_copy($0, $1, $2) },
        gntshrOpen: { xengntshr_open(nil, 0) },
        gntshrClose: { xengntshr_close($0) },
        gntshrSharePages: { xengntshr_share_pages($0, $1, $2, $3, $4) },
        gntshrUnshare: { xengntshr_unshare($0, $1, $2) },
        evtchnOpen: { xenevtchn_open(nil, 0) },
        evtchnClose: { xenevtchn_close($0) },
        evtchnFd: { xenevtchn_fd($0) },
        evtchnNotify: { xenevtchn_notify($0, $1) },
        evtchnBindUnbound: { xenevtchn_bind_unbound_port($0, $1) },
        evtchnBindInterdomain: { xenevtchn_bind_interdomain($0, $1, $2) },
        evtchnPending: { xenevtchn_pending($0) },
        evtchnUnmask: { xenevtchn_unmask($0, $1) },
        evtchnUnbind: { xenevtchn_unbind($0, $1) }
    )
}
