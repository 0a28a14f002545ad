import XenABI
import XenHypervisor

/// What the cross-process hypervisor daemon (XenSimulatorDaemon) needs beyond
/// the public API: the descriptor of a domain's grant table, to hand to the
/// process running that domain, and the hypervisor side of map and unmap
/// (pin and unpin), which the daemon performs for a process asking to map.
extension SimulatedDomain {
    /// The memfd holding this domain's `grant_entry_v1` array.
    package var grantTableFileDescriptor: Int32 { grantTable.memory.fd }

    /// Pins `ref` of this domain's table for `grantee`, with the in-process
    /// checks and statuses (`GrantTable.pin`). Returns the frame.
    package func pinGrant(_ ref: GrantRef, for grantee: DomainID, writable: Bool) throws(HypervisorError) -> UInt64 {
        let table = grantTable
        return try table.lock.withLock { () throws(HypervisorError) -> UInt64 in
            try table.pin(ref, for: grantee, writable: writable)
        }
    }

    /// Drops one pin taken by `pinGrant`.
    package func unpinGrant(_ ref: GrantRef, writable: Bool) {
        let table = grantTable
        table.lock.withLock { table.unpin(ref, writable: writable) }
    }
}
