import Foundation
import XenABI
import XenBus
import XenHost
import XenHypervisor
import XenLocks
import XenSimulatorClient
import XenStore

/// The world a process runs in, chosen once at start-up: the simulator shared
/// by a `xenpv hypervisor` daemon, or Xen's own libraries in a real domain.
/// The drivers never see which: they are given a `Hypervisor` and a store.
public enum World: String, CaseIterable, Sendable {
    /// `auto` picks at start-up (see ``resolved``); `simulated` joins a `xenpv hypervisor` daemon; `xen` uses Xen's libraries in a real domain.
    case auto, simulated, xen

    /// `auto` is `xen` where `/dev/xen/evtchn` exists, else `simulated`.
    public var resolved: World { self == .auto ? (XenHost.isAvailable ? .xen : .simulated) : self }
}

/// Why a process could not join its world, in words a person can act on.
public struct WorldError: Error, CustomStringConvertible, Sendable {
    /// What failed and, where it helps, what to do about it.
    public let description: String
    /// An error that reads `description`.
    public init(_ description: String) { self.description = description }
}

/// A domain this process runs as, in its world: the `Hypervisor` the drivers
/// are given (the calls are forwarded), the store speaking as this domain,
/// and how to leave.
public final class JoinedDomain: Hypervisor, @unchecked Sendable {
    // @unchecked: immutable after init; the forwarded objects are Sendable.
    /// The hypervisor calls are forwarded to: a `RemoteHypervisor` (simulated) or a `XenHost` (Xen).
    public let base: any Hypervisor
    /// The store, speaking as this domain; closed by ``close()``.
    public let store: any XenStoreConnection
    /// The world joined, never `.auto`.
    public let world: World
    private let leave: @Sendable () -> Void

    init(base: any Hypervisor, store: any XenStoreConnection, world: World, leave: @escaping @Sendable () -> Void) {
        self.base = base
        self.store = store
        self.world = world
        self.leave = leave
    }

    /// The domain this process runs as.
    public var domainID: DomainID { base.domainID }
    /// The allocator of this domain's pages, forwarded to ``base``.
    public var pageAllocator: any PageAllocator { base.pageAllocator }
    /// Opens an event-channel handle through ``base``.
    public func openEventChannels() throws(HypervisorError) -> any EventChannels { try base.openEventChannels() }
    /// Opens a grant-mapping handle through ``base``.
    public func openGrantMapper() throws(HypervisorError) -> any GrantMapper { try base.openGrantMapper() }
    /// Opens a grant-sharing handle through ``base``.
    public func openGrantSharer() throws(HypervisorError) -> any GrantSharer { try base.openGrantSharer() }
    /// Leaves the world: simulated, the daemon destroys a guest's domain and releases a dom0 process's resources; on Xen, the store connection closes.
    public func close() { leave() }

    /// The environment variable a toolstack (`xenpv create`) sets to the token of the
    /// domain it created for the program it starts.
    public static let tokenVariable = "XENPV_DOMAIN_TOKEN"
    /// The environment variable a toolstack sets to the hypervisor daemon's socket.
    public static let socketVariable = "XENPV_HYPERVISOR_SOCKET"

    /// Joins `world` as `request`. Simulated, it joins the daemon at `socket`
    /// (a `xenpv hypervisor --socket PATH`); on Xen a guest's devices are the
    /// real toolstack's, and its domain id comes from the store.
    ///
    /// A program a toolstack started finds its domain in its environment: in the
    /// simulated world a `.newGuest` request joins the domain named by
    /// ``tokenVariable`` instead when that is set, and a nil `socket` is
    /// ``socketVariable``'s value. A guest started by hand has neither and asks as given.
    public static func join(_ world: World, socket: String?, as request: DomainRequest) async throws(WorldError) -> JoinedDomain {
        let environment = ProcessInfo.processInfo.environment
        let socket = socket ?? environment[socketVariable]
        var request = request
        if case .newGuest = request, let text = environment[tokenVariable] {
            guard let token = DomainToken(text) else {
                throw WorldError("\(tokenVariable) is not a domain token (32 hex digits): \(text.prefix(40).debugDescription)")
            }
            request = .guest(token: token)
        }
        switch world.resolved {
        case .xen:
            // Opening the store and joining the daemon are blocking calls: on a thread of their own.
            let store: LibXenStore
            do { store = try await onOwnThread(named: "xenpv-join") { try LibXenStore() } } catch {
                throw WorldError("cannot open the store through libxenstore: \(error)")
            }
            var id = DomainID.dom0
            switch request {
            case .dom0, .backend: break
            case .newGuest, .guest:
                do { id = try XenstoreValue.domainID(try await store.read("domid"), key: "domid") } catch {
                    store.close()
                    throw WorldError("the store's domid is not a domain id: \(error)")
                }
            }
            return JoinedDomain(base: XenHost(domainID: id), store: store, world: .xen) { store.close() }
        case .simulated, .auto:
            guard let socket else {
                throw WorldError("a socket is needed for the simulated world (a `xenpv hypervisor --socket PATH`)")
            }
            let remote: RemoteHypervisor
            let asked = request
            do { remote = try await onOwnThread(named: "xenpv-join") { try RemoteHypervisor(socketPath: socket, as: asked) } } catch {
                throw WorldError("cannot join the hypervisor at \(socket): \(error)")
            }
            return JoinedDomain(base: remote, store: remote.store, world: .simulated) { remote.close() }
        }
    }
}
