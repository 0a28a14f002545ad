import TestSupport
import XenABI
import XenHypervisor

/// A hypervisor whose `openEventChannels` waits at a gate first, then forwards every call:
/// for a test that a driver's blocking calls do not run on a thread of the cooperative pool.
public final class GatedHypervisor: Hypervisor, @unchecked Sendable {
    // @unchecked: both fields are Sendable and immutable.
    public let inner: any Hypervisor
    private let gate: BlockingGate

    public init(_ inner: any Hypervisor, gate: BlockingGate) {
        self.inner = inner
        self.gate = gate
    }

    public var domainID: DomainID { inner.domainID }
    public func openEventChannels() throws(HypervisorError) -> any EventChannels {
        gate.pass()
        return try inner.openEventChannels()
    }
    public func openGrantMapper() throws(HypervisorError) -> any GrantMapper { try inner.openGrantMapper() }
    public func openGrantSharer() throws(HypervisorError) -> any GrantSharer { try inner.openGrantSharer() }
    public var pageAllocator: any PageAllocator { inner.pageAllocator }
}
