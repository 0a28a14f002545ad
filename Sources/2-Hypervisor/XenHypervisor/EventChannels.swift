import Glibc
import SystemPackage
import XenABI

/// An event-channel handle, shaped like `xenevtchn`: ports bound through it
/// deliver to its one pollable descriptor.
///
/// As with the Linux driver, a port that fires is masked when `pending()`
/// reports it; the caller handles the event, then calls `unmask` to re-arm it.
public protocol EventChannels: AnyObject, Sendable {
    /// Readable while a port bound through this handle is pending and
    /// unmasked (`xenevtchn_fd`). Poll it; do not read from it directly.
    var fileDescriptor: FileDescriptor { get }
    /// Allocates a port for `remote` to bind to later
    /// (`xenevtchn_bind_unbound_port`, `EVTCHNOP_alloc_unbound`).
    func bindUnbound(remote: DomainID) throws(HypervisorError) -> EventPort
    /// Connects a new local port to `remotePort`, which `remote` allocated
    /// unbound for this domain (`xenevtchn_bind_interdomain`).
    func bindInterdomain(remote: DomainID, remotePort: EventPort) throws(HypervisorError) -> EventPort
    /// Sets the peer's port pending (`xenevtchn_notify`); an error for a port
    /// that is closed or not yet connected.
    func notify(_ port: EventPort) throws(HypervisorError)
    /// The next port that fired, now masked, or nil when none is pending
    /// (`xenevtchn_pending`, never blocking).
    func pending() throws(HypervisorError) -> EventPort?
    /// Re-arms a port after its event was handled (`xenevtchn_unmask`); if it
    /// became pending meanwhile, the descriptor becomes readable again.
    func unmask(_ port: EventPort) throws(HypervisorError)
    /// Closes a port (`xenevtchn_unbind`); the peer's notify then fails.
    func unbind(_ port: EventPort) throws(HypervisorError)
    /// Unbinds every port still bound through this handle and releases it.
    func close()
}

extension EventChannels {
    /// Sleeps until the descriptor is readable or `timeoutMilliseconds` pass
    /// (-1: no limit). Returns true when an event may be pending.
    public func wait(timeoutMilliseconds: Int32) throws(HypervisorError) -> Bool {
        var pfd = pollfd(fd: fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&pfd, 1, timeoutMilliseconds)
            if n >= 0 { return n > 0 }
            let err = Errno(rawValue: Glibc.errno)
            if err != .interrupted { throw .errno(err, "poll on event channel descriptor") }
        }
    }
}
