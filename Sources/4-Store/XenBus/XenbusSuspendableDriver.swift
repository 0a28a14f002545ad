import XenHypervisor

/// A frontend driver that takes part in save, restore and migration, as Linux's
/// `xenbus_driver` `suspend`/`resume`/`resume_cancelled` hooks do.
///
/// Its ``XenbusEndpoint`` calls ``quiesce()`` from ``XenbusEndpoint/suspend()`` and
/// ``resume(_:)`` from ``XenbusEndpoint/resume(_:)``, between two handshake steps, so no
/// `prepare`, `connect` or `disconnect` runs at the same time.
public protocol XenbusSuspendableDriver: XenbusDeviceDriver {
    /// Stops putting requests on the rings at a safe point, keeping every request that has
    /// no response; calls made meanwhile wait. Returns once nothing is being written to
    /// the shared pages.
    func quiesce() async
    /// `.cancelled`: goes on with the same rings, grants and ports. `.resumed`: every
    /// grant, mapping and port of the old session is gone: drops them without releasing
    /// any (releasing would fail or hit someone else's) and keeps what had no response
    /// for the next session, which the endpoint then starts.
    func resume(_ outcome: SuspendOutcome) async
}
