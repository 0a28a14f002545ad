import Dispatch
import Foundation
import XenBus
import XenWorld

/// A guest command's side of the PV control protocol: the first request acknowledged on
/// `control/shutdown` (``GuestControl``) is kept, and whoever waits is woken.
final class ShutdownWatch: @unchecked Sendable {
    // @unchecked: `received` is guarded by `lock`; `task` is set once in init.
    private let lock = NSLock()
    private var received: ShutdownRequest?
    private let arrived = DispatchSemaphore(value: 0)
    private var task: Task<Void, Never>?

    init(_ hv: JoinedDomain, enabled: Bool) {
        guard enabled else { return }
        let control = GuestControl(store: hv.store, domain: hv.domainID)
        task = Task { [self] in
            guard let requests = try? await control.requests() else { return }
            for await request in requests {
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
