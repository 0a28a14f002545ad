import XenABI
import XenHypervisor

/// Log-dirty of one domain (Xen's `XEN_DOMCTL_SHADOW_OP_*`); ``SimulatedHypervisor``
/// offers the same by domain id as ``DirtyLogging``.
extension SimulatedDomain {
    /// Starts logging this domain's writes in this process: its own writes to its
    /// memory (``memory(of:)``, the page allocator's and grant sharer's pages) through
    /// a userfaultfd of this process, and what other domains write through its
    /// grants (writable mappings, grant copies), marked by the grant code.
    /// `EBUSY` when already logging, `EOPNOTSUPP` without userfaultfd write-protect.
    public func startDirtyLog() throws(HypervisorError) {
        _ = try liveHypervisor()
        let tracker = try PageWriteTracker.ownProcess()
        do throws(HypervisorError) {
            try tracker.track(address: UInt64(UInt(bitPattern: memory.base)), first: FrameNumber(0), count: frameCount)
            try dirty.start(trackers: [tracker], owning: [tracker])
        } catch {
            tracker.close()
            throw error
        }
    }

    /// Starts logging with the trackers of the processes that write this domain's
    /// memory elsewhere (the daemon's guest process); they stay open at stop.
    package func startDirtyLog(trackers: [PageWriteTracker]) throws(HypervisorError) {
        _ = try liveHypervisor()
        try dirty.start(trackers: trackers)
    }

    /// A writer process that joined while logging: its tracker is armed at once.
    package func addDirtyTracker(_ tracker: PageWriteTracker) throws(HypervisorError) {
        try dirty.add(tracker)
    }

    /// The frames written since logging started or since the previous call,
    /// cleared (`XEN_DOMCTL_SHADOW_OP_CLEAN`): a frame is reported once, then
    /// again only after another write. Frames a peer maps writable are reported
    /// every time. `EINVAL` when not logging.
    public func readAndClearDirty() throws(HypervisorError) -> DirtyBitmap {
        let table = grantTable
        let writable = table.lock.withLock { table.writablyPinnedFrames() }
        return try dirty.readAndClear(writable: writable)
    }

    /// Stops logging: write protection dropped, this process's userfaultfd closed.
    /// `EINVAL` when not logging.
    public func stopDirtyLog() throws(HypervisorError) {
        guard dirty.stop() else { throw .errno(.invalidArgument, "log-dirty of \(domainID) is off") }
    }

    /// Whether this domain's writes are being logged.
    public var isLoggingDirty: Bool { dirty.isLogging }

    /// The memfd of the grant writers' bitmap (one bit per frame, frame `n` at bit
    /// `n % 64` of little-endian word `n / 64`), which the daemon shares with dom0's
    /// processes so that their grant copies mark what they write.
    package var grantDirtyBitmapFileDescriptor: Int32 { dirty.grantBits.fd }

    /// Bytes of that bitmap's memfd (whole pages).
    package var grantDirtyBitmapBytes: Int { dirty.grantBits.pageCount * XenPage.size }
}

extension SimulatedHypervisor: DirtyLogging {
    /// Starts log-dirty of `domain` (see ``SimulatedDomain/startDirtyLog()``); `ESRCH` for no such domain.
    public func startDirtyLog(_ domain: DomainID) throws(HypervisorError) {
        try liveDomain(domain).startDirtyLog()
    }

    /// Reads and clears `domain`'s dirty frames (see ``SimulatedDomain/readAndClearDirty()``).
    public func readAndClearDirty(_ domain: DomainID) throws(HypervisorError) -> DirtyBitmap {
        try liveDomain(domain).readAndClearDirty()
    }

    /// Stops log-dirty of `domain` (see ``SimulatedDomain/stopDirtyLog()``).
    public func stopDirtyLog(_ domain: DomainID) throws(HypervisorError) {
        try liveDomain(domain).stopDirtyLog()
    }

    private func liveDomain(_ id: DomainID) throws(HypervisorError) -> SimulatedDomain {
        guard let d = domain(id) else { throw .errno(.noSuchProcess, "log-dirty: no domain \(id)") }
        return d
    }
}
