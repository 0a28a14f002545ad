import Glibc
import XenSockets

/// What the hypervisor daemon lets its clients do and hold: who counts as
/// dom0, and a cap on everything a client can make the daemon keep.
public struct DaemonPolicy: Sendable {
    /// Who may join as dom0 and create guests (root and the daemon's own user by default).
    public var trusted = TrustedPeers()
    /// The socket file's mode: the owner alone (0600) or a group too (0660).
    public var socketAccess = SocketAccess.ownerOnly
    /// dom0 backend processes joined at once (`DomainRequest.backend`).
    public var maxBackends = 1
    /// Connections at once, from everyone and from one untrusted user.
    public var maxConnections = 512
    /// Connections at once from one user the daemon does not trust (trusted users have only `maxConnections`).
    public var maxConnectionsPerUser = 16
    /// Event-channel ports a guest process may hold bound.
    public var maxPortsPerGuest = 64
    /// Grant mappings (map calls not yet unmapped) a guest process may hold.
    public var maxMappingsPerGuest = 256
    /// Domains created for a token that may wait for their guest at once, and for how long.
    public var maxPendingDomains = 64
    /// Seconds a created domain waits for its guest to join before the daemon destroys it.
    public var pendingLifetime: Double = 60

    /// The default policy: root and this user trusted, socket mode 0600, one backend process, the caps above.
    public init() {}
}
