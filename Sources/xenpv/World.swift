import ArgumentParser
import Foundation
import SystemPackage
import XenABI
import XenHost
import XenHypervisor
import XenSimulatorDaemon
import XenBus
import XenStore

/// The world a process runs in, chosen at start-up (issue 8): the simulator
/// shared by `xenpv hypervisor`, or Xen's own libraries in a real domain.
enum World: String, ExpressibleByArgument, CaseIterable {
    case auto, simulated, xen

    /// `auto` is `xen` where `/dev/xen/evtchn` exists, else `simulated`.
    var resolved: World { self == .auto ? (XenHost.isAvailable ? .xen : .simulated) : self }
}

/// A domain this process runs as, in its world: the `Hypervisor` the drivers
/// are given (the calls are forwarded), the store speaking as this domain,
/// and how to leave.
final class JoinedDomain: Hypervisor, @unchecked Sendable {
    // @unchecked: immutable after init; the forwarded objects are Sendable.
    let base: any Hypervisor
    let store: any XenStoreConnection
    let world: World
    private let leave: @Sendable () -> Void

    init(base: any Hypervisor, store: any XenStoreConnection, world: World, leave: @escaping @Sendable () -> Void) {
        self.base = base
        self.store = store
        self.world = world
        self.leave = leave
    }

    var domainID: DomainID { base.domainID }
    var pageAllocator: any PageAllocator { base.pageAllocator }
    func openEventChannels() throws(HypervisorError) -> any EventChannels { try base.openEventChannels() }
    func openGrantMapper() throws(HypervisorError) -> any GrantMapper { try base.openGrantMapper() }
    func openGrantSharer() throws(HypervisorError) -> any GrantSharer { try base.openGrantSharer() }
    func close() { leave() }

    /// Joins `world` as `request`; on Xen a guest's devices are the real
    /// toolstack's, and its domain id comes from the store.
    static func join(_ world: World, connect: String?, as request: DomainRequest) throws -> JoinedDomain {
        switch world.resolved {
        case .xen:
            let store: LibXenStore
            do { store = try LibXenStore() } catch { throw CommandError("cannot open the store through libxenstore: \(error)") }
            var id = DomainID.dom0
            switch request {
            case .dom0, .backend: break
            case .newGuest, .guest:
                let text = try ProcessSupport.runBlocking { try await store.read("domid") }
                do { id = try XenstoreValue.domainID(text, key: "domid") } catch {
                    throw CommandError("the store's domid is not a domain id: \(error)")
                }
            }
            return JoinedDomain(base: XenHost(domainID: id), store: store, world: .xen) { store.close() }
        case .simulated, .auto:
            guard let connect else {
                throw ValidationError("--connect PATH is needed for the simulated world (a `xenpv hypervisor --socket PATH`)")
            }
            let remote = try ProcessSupport.join(connect, as: request)
            return JoinedDomain(base: remote, store: remote.store, world: .simulated) { remote.close() }
        }
    }
}
