import Glibc
import XenABI
import XenHypervisor

/// The real-Xen world: the hypervisor as a domain sees it through Xen's own
/// user-space libraries (`libxengnttab`, `libxenevtchn`). The same drivers
/// that run on the simulator run on this.
public final class XenHost: Hypervisor {
    /// The domain this process runs in, as given at init.
    public let domainID: DomainID
    /// Allocates anonymous memory of this process; its frame numbers are virtual page numbers, which cannot be granted (share through ``openGrantSharer()``).
    public let pageAllocator: any PageAllocator
    let lib: LibXen

    /// A view for domain `domainID` (a process learns its own id from the
    /// store's `domid` key). `library` is the funnel; tests replace it.
    public init(domainID: DomainID, library: LibXen = .system) {
        self.domainID = domainID
        self.lib = library
        self.pageAllocator = AnonymousPageAllocator()
    }

    /// True where this process runs in a Xen domain with the event-channel
    /// device: the condition for choosing the real-Xen world automatically.
    public static var isAvailable: Bool { access("/dev/xen/evtchn", R_OK | W_OK) == 0 }

    /// Opens a `xenevtchn` handle; throws the library's errno (with a hint when `/dev/xen` is missing).
    public func openEventChannels() throws(HypervisorError) -> any EventChannels {
        try XenEventChannels(lib)
    }

    /// Opens a `xengnttab` handle; throws the library's errno (with a hint when `/dev/xen` is missing).
    public func openGrantMapper() throws(HypervisorError) -> any GrantMapper {
        try XenGrantMapper(lib)
    }

    /// Opens a `xengntshr` handle; throws the library's errno (with a hint when `/dev/xen` is missing).
    public func openGrantSharer() throws(HypervisorError) -> any GrantSharer {
        try XenGrantSharer(lib)
    }
}

extension HypervisorError {
    /// The error of a libxen call that just failed, read through the funnel.
    static func libxen(_ lib: LibXen, _ call: String) -> HypervisorError {
        let code = lib.errno()
        let hint = code == ENOENT || code == ENODEV || code == EACCES ? " (is this a Xen domain with /dev/xen?)" : ""
        return .errno(.init(rawValue: code), "\(call) failed\(hint)")
    }
}
