/// Per-domain limits, so one domain cannot exhaust the store (XSA-349 was an unbounded
/// watch-event queue). Defaults follow C xenstored's; errors are Xen's (`ENOSPC`, `E2BIG`).
/// Xen's quotas and where they are: nodes `nodesPerDomain`, node size `valueSize`,
/// permissions `permissionsPerNode`, watches `watchesPerDomain`, transactions
/// `transactionsPerConnection`, transaction nodes `transactionNodes`, outstanding requests
/// `outstandingRequests`; and, for the daemon's own resources, connections and queued events.
public struct XenStoreQuotas: Hashable, Sendable {
    /// Nodes a domain may own (`quota-nb-entry-per-domain`); beyond: `ENOSPC`, for a write
    /// and for a transaction's commit (checked again then, as C xenstored does).
    public var nodesPerDomain = 1000
    /// Watches a domain may hold (`quota-nb-watch-per-domain`); beyond: `E2BIG`.
    public var watchesPerDomain = 128
    /// Open transactions per connection (`quota-max-transaction`); beyond: `ENOSPC`.
    public var transactionsPerConnection = 10
    /// Open transactions per dom0 connection: higher than a guest's, but a cap, since each
    /// holds memory; beyond: `ENOSPC`.
    public var dom0TransactionsPerConnection = 128
    /// Nodes one transaction may touch (read, write or remove) before its requests get
    /// `ENOSPC` (C xenstored's `-Q transaction-nodes`); what it touched is what it makes
    /// the store remember until it ends.
    public var transactionNodes = 1024
    /// The same for a dom0 transaction: larger, still a cap.
    public var dom0TransactionNodes = 65536
    /// Entries in one node's permission list a guest may set (`-Q permissions`); beyond: `ENOSPC`.
    public var permissionsPerNode = 5
    /// Bytes of one node's value (`quota-max-entry-size`); beyond: `ENOSPC`.
    public var valueSize = 2048
    /// Requests a connection may have waiting for their replies to be sent; beyond, the
    /// server stops reading from it until it reads its replies (back-pressure, no error).
    public var outstandingRequests = 20
    /// Watch events queued for a connection that is not reading them; beyond, the server
    /// closes a guest's connection rather than grow without bound, and for a dom0 connection
    /// holds back whoever caused them until it has read half.
    public var queuedWatchEvents = 1024
    /// Socket connections served at once; beyond, a new one is closed at accept.
    public var connections = 4096
    /// Socket connections one local user (by peer credentials) may hold; beyond, closed at accept.
    public var connectionsPerUser = 1024
    /// Whether the limits bind dom0 too (xenstored exempts privileged domains).
    public var appliesToDom0 = false

    /// C xenstored's default limits; change the fields to tighten or relax them.
    public init() {}
}
