import XenABI
import XenHypervisor

/// Notifies the peer on one port and counts it.
///
/// A port whose peer has not bound yet, or has gone, takes the notification and drops it,
/// as Xen does for an unbound port: the peer looks at the ring when it (re)binds. Any
/// other failure means the event-channel handle is unusable: it throws, and the queue
/// stops with that failure like any other.
public struct Doorbell: Sendable {
    public let events: any EventChannels
    public let port: EventPort
    public let notifies: DriverCounter

    public init(events: any EventChannels, port: EventPort, notifies: DriverCounter) {
        self.events = events
        self.port = port
        self.notifies = notifies
    }

    @inline(__always)
    public func ring() throws(HypervisorError) {
        do {
            try events.notify(port)
        } catch where error.code == .errno(.socketNotConnected) {
            return
        }
        notifies.bump()
    }
}
