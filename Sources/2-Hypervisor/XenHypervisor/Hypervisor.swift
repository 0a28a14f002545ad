import XenABI

/// The hypervisor as one domain sees it: the entry point a driver is given.
///
/// Drivers depend on this protocol and the handle protocols it opens, never on
/// a concrete world. The simulated hypervisor and the real-Xen host both
/// implement it; tests and programs choose which one to pass in.
public protocol Hypervisor: AnyObject, Sendable {
    /// The domain this view belongs to.
    var domainID: DomainID { get }
    /// Opens an event-channel handle (`xenevtchn_open`). Each handle has its own
    /// pollable descriptor and receives only the ports bound through it, so each
    /// driver thread can sleep on its own handle.
    func openEventChannels() throws(HypervisorError) -> any EventChannels
    /// Opens a grant-mapping handle (`xengnttab_open`).
    func openGrantMapper() throws(HypervisorError) -> any GrantMapper
    /// Opens a grant-sharing handle (`xengntshr_open`).
    func openGrantSharer() throws(HypervisorError) -> any GrantSharer
    /// The allocator of this domain's own private pages.
    var pageAllocator: any PageAllocator { get }
}
