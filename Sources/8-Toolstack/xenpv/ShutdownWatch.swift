import Dispatch
import Foundation
import XenBus
import XenHypervisor
import XenStore
import XenWorld

/// A guest command's side of the PV control protocol: the first request acknowledged on
/// `control/shutdown` (``GuestControl``) is kept, and whoever waits is woken. A `suspend`
/// request goes to ``suspender`` when the world can suspend the domain (its hypervisor
/// conforms to `DomainSuspending`); the command adds its frontends' endpoints to it.
final class ShutdownWatch: @unchecked Sendable {
    // @unchecked: `received` is guarded by `lock`; `task` is set once in init.
    private let lock = NSLock()
    private var received: ShutdownRequest?
    private let arrived = DispatchSemaphore(value: 0)
    private var task: Task<Void, Never>?
    /// Quiesces and resumes the command's devices on `control/shutdown = suspend`; nil
    /// when the world cannot suspend the domain (a suspend request then ends the command).
    let suspender: GuestSuspender?

    init(_ hv: JoinedDomain, enabled: Bool) {
        suspender = enabled ? (hv.base as? any DomainSuspending).map { GuestSuspender(hypervisor: $0) } : nil
        guard enabled else { return }
        let control = GuestControl(store: hv.store, domain: hv.domainID)
        let suspender = self.suspender
        task = Task { [self] in
            if suspender != nil { try? await hv.store.write(XenStorePath.home(of: hv.domainID) + "/" + GuestSuspender.featureKey, "1") }
            guard let requests = try? await control.requests() else { return }
            for await request in requests {
                if request == .suspend, let suspender {
                    guard !suspender.isSuspending else {
                        say("xenpv guest: suspend requested while suspending; ignored")
                        continue
                    }
                    say("xenpv guest: suspend requested by the toolstack")
                    Task { say("xenpv guest: suspend: \(await suspender.suspend())") }
                    continue
                }
                let first = lock.withLock { () -> Bool in
                    defer { if received == nil { received = request } }
                    return received == nil
                }
                guard first else { continue }
                say("xenpv guest: \(request.rawValue) requested by the toolstack; shutting down")
                arrived.signal()
            }
        }
    }

    /// The request acknowledged, if one came.
    var request: ShutdownRequest? { lock.withLock { received } }

    /// Blocks the calling (main) thread until a request comes. Never call from a task.
    func wait() {
        guard task != nil else {
            // Without the control driver nothing ends the wait but a signal.
            while true { sleep(3600) }
        }
        if request != nil { return }
        arrived.wait()
        arrived.signal()
    }

    func cancel() { task?.cancel() }
}
