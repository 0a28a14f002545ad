import Dispatch
import Foundation
import XenLocks
import XenBus
import XenHypervisor
import XenStore
import XenWorld

/// A guest command's side of the PV control protocol: the first request acknowledged on
/// `control/shutdown` (``GuestControl``) is kept, and whoever waits is woken. A `suspend`
/// request goes to ``suspender`` when the world can suspend the domain (its hypervisor
/// conforms to `DomainSuspending`); the command adds its frontends' endpoints to it.
final class ShutdownWatch: @unchecked Sendable {
    // @unchecked: `received`, `probes` and `suspendHooks` are guarded by `lock`; `task` is set once in init.
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
            guard let suspender else {
                // The world cannot suspend the domain: a suspend request ends the command too.
                guard let requests = try? await control.requests() else { return }
                for await request in requests { keep(request) }
                return
            }
            try? await suspender.run(control: control, serving: { [self] s in await serve(s) }, otherRequests: { [self] r in keep(r) })
        }
    }

    /// Keeps the first request that is not a suspend and wakes whoever waits.
    private func keep(_ request: ShutdownRequest) {
        let first = lock.withLock { () -> Bool in
            defer { if received == nil { received = request } }
            return received == nil
        }
        guard first else { return }
        say("xenpv guest: \(request.rawValue) requested by the toolstack; shutting down")
        arrived.signal()
    }

    /// One suspend request: the command's hooks around the suspender's work, then the
    /// downtime the guest saw. Without hooks the next request may come while the
    /// downtime is measured, so that is reported apart.
    private func serve(_ suspender: GuestSuspender) async {
        say("xenpv guest: suspend requested by the toolstack")
        let hooks = lock.withLock { suspendHooks }
        // The command's own work around the pause (a memory writer stopping and
        // checksumming) blocks, so it runs on a thread of its own; after the resume it
        // waits for the downtime's figures, so it does not slow them.
        if !hooks.isEmpty { await onOwnThread(named: "xenpv-hooks") { hooks.forEach { $0.before() } } }
        let result = await suspender.suspend()
        say("xenpv guest: suspend: \(result)")
        guard !hooks.isEmpty else {
            if result == .resumed { Task { [self] in await reportDowntime(suspender) } }
            return
        }
        if result == .resumed { await reportDowntime(suspender) }
        await onOwnThread(named: "xenpv-hooks") { hooks.forEach { $0.after(result == .resumed) } }
    }

    /// A device's request for timing the first answer after a resume, and how long ago its
    /// connection took its first response (a re-issued or new request answered).
    private struct Probe {
        let sinceFirstAnswer: @Sendable () -> Duration?
        let request: @Sendable () async throws -> Void
    }
    private var probes: [String: Probe] = [:]

    /// Work of the command's around each suspend the ``suspender`` runs: `before` ahead of
    /// the devices' quiesce, `after` (told whether the domain resumed from a copy) once the
    /// suspend is over. Both block a thread of their own.
    private struct SuspendHook {
        let before: @Sendable () -> Void
        let after: @Sendable (_ resumed: Bool) -> Void
    }
    private var suspendHooks: [SuspendHook] = []

    /// Adds work to run around each suspend from the next one on (before the devices
    /// quiesce; after the suspend, with whether the domain resumed from a copy).
    func aroundSuspend(before: @escaping @Sendable () -> Void, after: @escaping @Sendable (_ resumed: Bool) -> Void) {
        lock.withLock { suspendHooks.append(SuspendHook(before: before, after: after)) }
    }

    /// Registers a request to one of the command's devices (a one-sector read), made
    /// after a resume once every device is connected, and `sinceFirstAnswer`, which says
    /// how long ago the device's connection took its first response: together they time
    /// the first request answered on the destination.
    func addProbe(_ name: String, sinceFirstAnswer: @escaping @Sendable () -> Duration?,
                  _ probe: @escaping @Sendable () async throws -> Void) {
        lock.withLock { probes[name] = Probe(sinceFirstAnswer: sinceFirstAnswer, request: probe) }
    }

    /// Forgets the probe of a device the command no longer uses.
    func removeProbe(_ name: String) {
        lock.withLock { _ = probes.removeValue(forKey: name) }
    }

    /// The downtime the guest saw, as issue 18 defines it: from the pause (its
    /// hypervisor call; the devices' quiesce before it) to every device Connected on
    /// the destination and the first request answered there. That answer is the first
    /// response any device's new connection took (a request re-issued from before the
    /// pause, or a new one), or else the probes' (each in turn, after every device is
    /// connected: a guest with nothing in flight). The probes' own answer is reported
    /// too: it queues behind what the guest had in flight.
    private func reportDowntime(_ suspender: GuestSuspender) async {
        guard let t = suspender.lastTiming, let devices = await suspender.reconnectedDevices(timeout: .seconds(60)) else {
            say("xenpv guest: downtime: the devices did not all connect again within 60 s")
            return
        }
        // With no device, the resume itself.
        let connected = devices.map(\.at).max() ?? t.resumed
        let devicesProbed = lock.withLock { probes }.sorted { $0.key < $1.key }
        var probeAnswered: ContinuousClock.Instant?
        for (name, probe) in devicesProbed {
            do {
                try await probe.request()
                probeAnswered = .now
            } catch {
                say("xenpv guest: downtime: the first request to \(name) failed: \(error)")
            }
        }
        // Asked once the probes are answered, so that at least one response came. Each
        // connection is the destination's (made after the resume, its counters new).
        let now = ContinuousClock.now
        let answered = devicesProbed.compactMap { $0.value.sinceFirstAnswer().map { now - $0 } }.min() ?? probeAnswered
        func ms(_ d: Duration) -> String {
            String(format: "%.2f", Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15)
        }
        say("xenpv guest: downtime: quiesce \(ms(t.paused - t.started)) ms, then after the pause: answered \(ms(t.answered - t.paused)) ms,"
            + " devices resumed \(ms(t.resumed - t.paused)) ms, connected \(ms(connected - t.paused)) ms"
            // Each device too when there are several ("vbd/768 connected 12.10 ms"): which one holds the rest up.
            + (devices.count < 2 ? "" : devices.map {
                ", \($0.path.split(separator: "/").suffix(2).joined(separator: "/")) connected \(ms($0.at - t.paused)) ms"
            }.joined())
            + (answered.map { ", first request answered \(ms($0 - t.paused)) ms" } ?? "")
            + (probeAnswered.map { ", probe answered \(ms($0 - t.paused)) ms" } ?? "")
            + (answered.map { ", downtime \(ms(max($0, connected) - t.paused)) ms" } ?? ""))
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

    /// Makes a request end the process's wait for a termination signal
    /// (`ProcessSupport.waitForTerminationSignal`) as a signal does: a thread of its own
    /// waits and raises SIGTERM. Install the handler first (the wait does, long before
    /// dom0's request can arrive).
    func raiseSIGTERMOnRequest() {
        startDetachedThread(named: "shutdown-wait") { [self] in wait(); kill(getpid(), SIGTERM) }
    }

    func cancel() { task?.cancel() }
}
