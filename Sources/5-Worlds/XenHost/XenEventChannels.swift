import Glibc
import Synchronization
import SystemPackage
import XenABI
import XenHypervisor

/// `EventChannels` on `xenevtchn` (the evtchn device). Its descriptor is made
/// non-blocking so `pending()` answers nil instead of sleeping in `read`.
final class XenEventChannels: EventChannels {
    private let lib: LibXen
    // The libxen handle is an fd wrapper whose calls are single ioctls, safe
    // from any thread; it is only released once, by close().
    nonisolated(unsafe) private let handle: LibXen.Handle
    private let closed = Atomic<Bool>(false)
    let fileDescriptor: FileDescriptor

    init(_ lib: LibXen) throws(HypervisorError) {
        guard let handle = lib.evtchnOpen() else { throw .libxen(lib, "xenevtchn_open") }
        let fd = lib.evtchnFd(handle)
        let flags = fcntl(fd, F_GETFL)
        guard fd >= 0, flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else {
            let error = HypervisorError.errno(.init(rawValue: Glibc.errno), "make the event-channel descriptor non-blocking")
            _ = lib.evtchnClose(handle)
            throw error
        }
        self.lib = lib
        self.handle = handle
        self.fileDescriptor = FileDescriptor(rawValue: fd)
    }

    deinit { close() }

    func bindUnbound(remote: DomainID) throws(HypervisorError) -> EventPort {
        try port(lib.evtchnBindUnbound(handle, UInt32(remote.rawValue)), "xenevtchn_bind_unbound_port(\(remote))")
    }

    func bindInterdomain(remote: DomainID, remotePort: EventPort) throws(HypervisorError) -> EventPort {
        try port(lib.evtchnBindInterdomain(handle, UInt32(remote.rawValue), remotePort.rawValue),
                 "xenevtchn_bind_interdomain(\(remote), \(remotePort))")
    }

    func notify(_ port: EventPort) throws(HypervisorError) {
        try checkOpen()
        guard lib.evtchnNotify(handle, port.rawValue) == 0 else { throw .libxen(lib, "xenevtchn_notify(\(port))") }
    }

    func pending() throws(HypervisorError) -> EventPort? {
        try checkOpen()
        let r = lib.evtchnPending(handle)
        if r >= 0 { return EventPort(UInt32(r)) }
        let code = lib.errno()
        if code == EAGAIN || code == EWOULDBLOCK { return nil }
        throw .errno(.init(rawValue: code), "xenevtchn_pending failed")
    }

    func unmask(_ port: EventPort) throws(HypervisorError) {
        try checkOpen()
        guard lib.evtchnUnmask(handle, port.rawValue) == 0 else { throw .libxen(lib, "xenevtchn_unmask(\(port))") }
    }

    func unbind(_ port: EventPort) throws(HypervisorError) {
        try checkOpen()
        guard lib.evtchnUnbind(handle, port.rawValue) == 0 else { throw .libxen(lib, "xenevtchn_unbind(\(port))") }
    }

    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = lib.evtchnClose(handle)
    }

    private func port(_ r: Int32, _ call: String) throws(HypervisorError) -> EventPort {
        try checkOpen()
        guard r >= 0 else { throw .libxen(lib, call) }
        return EventPort(UInt32(r))
    }

    private func checkOpen() throws(HypervisorError) {
        if closed.load(ordering: .acquiring) { throw HypervisorError(.closed, "event channel handle") }
    }
}
