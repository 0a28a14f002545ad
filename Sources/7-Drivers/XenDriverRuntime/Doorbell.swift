import XenABI
import XenHypervisor

/// Notifies the peer on one port and counts it.
///
/// A port whose peer has not bound yet, or has gone, takes the notification and drops it,
/// as Xen does for an unbound port: the peer looks at the ring when it (re)binds. Any
/// other failure means the event-channel handle is unusable: it throws, and the queue
/// stops with that failure like any other.
public struct Doorbell: Sendable {
    /// The handle the port is bound through; owned by the queue, which unbinds and closes it.
    public let events: any EventChannels
    /// This side's end of the channel (the local port whose peer is notified).
    public let port: EventPort
    /// Counts notifications sent (dropped ones are not counted).
    public let notifies: DriverCounter

    /// A doorbell on `port` of `events` that counts into `notifies`.
    public init(events: any EventChannels, port: EventPort, notifies: DriverCounter) {
        self.events = events
        self.port = port
        self.notifies = notifies
    }

    /// Notifies the peer (`xenevtchn_notify`) and counts it. An `ENOTCONN` (no peer bound) is dropped silently; any other error is thrown.
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
