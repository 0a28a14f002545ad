import Foundation
import Logging
import XenABI
import XenHypervisor
import XenLocks
import XenStore

/// The guest's side of save, restore and migration, as Linux's `do_suspend`
/// (drivers/xen/manage.c) runs it on `control/shutdown = suspend`: quiesce every
/// device, ask the hypervisor to suspend the domain, and resume every device with the
/// outcome. A program makes one, adds its frontends' endpoints, and either runs
/// ``run(control:serving:otherRequests:)`` or calls ``suspend()`` from its own control loop.
///
/// The hypervisor call blocks until the toolstack answers, so it runs on a thread of its
/// own, never on the cooperative pool. A call that throws is a cancel: the devices go on
/// as they were. A program's I/O only waits while the domain is suspended.
public final class GuestSuspender: Sendable {
    /// How one ``suspend()`` ended.
    public enum Result: Sendable, Hashable {
        /// The domain runs from a saved copy: every device started a new handshake with
        /// the backends the store names now.
        case resumed
        /// The toolstack cancelled: the devices went on with their rings.
        case cancelled
        /// The hypervisor refused or timed out; the devices went on as after a cancel.
        case failed(HypervisorError)
        /// Another suspend was running; this one did nothing.
        case busy
    }

    /// `control/feature-suspend`, relative to the domain's home: written by ``run(control:serving:otherRequests:)``
    /// as Linux does, so a toolstack knows the guest answers a suspend request.
    public static let featureKey = "control/feature-suspend"

    /// When the steps of one ``suspend()`` happened (`ContinuousClock`), for the downtime
    /// a guest sees: its I/O stops at ``started`` and goes on once its devices are
    /// Connected again (``GuestSuspender/reconnected(timeout:)``).
    public struct Timing: Sendable, Hashable {
        /// The suspend began: the devices start to quiesce.
        public let started: ContinuousClock.Instant
        /// Every device quiesced; the hypervisor call (the pause) begins.
        public let paused: ContinuousClock.Instant
        /// The hypervisor call returned (on the destination, after a move).
        public let answered: ContinuousClock.Instant
        /// Every device resumed (after a move: each started its new handshake).
        public let resumed: ContinuousClock.Instant
    }

    private struct State {
        var devices: [XenbusEndpoint] = []
        var running = false
        var timing: Timing?
        /// After a `.resumed`: the moment each device was Connected again, by its path (nil if one never was).
        var reconnection: Task<[(path: String, at: ContinuousClock.Instant)]?, Never>?
    }

    private let hypervisor: any DomainSuspending
    private let timeout: Duration
    private let logger: Logger
    private let state = Locked<State>(State())

    /// A suspender asking `hypervisor` (the domain's own view, conforming to
    /// `DomainSuspending`) to suspend the domain, waiting at most `timeout` for the
    /// toolstack's answer, with `devices` (frontend endpoints) to quiesce and resume.
    public init(hypervisor: any DomainSuspending, devices: [XenbusEndpoint] = [], timeout: Duration = .seconds(300),
                logger: Logger = Logger(label: "xen-suspend")) {
        self.hypervisor = hypervisor
        self.timeout = timeout
        self.logger = logger
        state.withLock { $0.devices = devices }
    }

    /// Adds a device (a frontend's endpoint) to quiesce and resume from the next suspend on.
    public func add(_ endpoint: XenbusEndpoint) {
        state.withLock { $0.devices.append(endpoint) }
    }

    /// Forgets a device (one being unplugged).
    public func remove(_ endpoint: XenbusEndpoint) {
        state.withLock { $0.devices.removeAll { $0 === endpoint } }
    }

    /// Whether a suspend is running now.
    public var isSuspending: Bool { state.withLock { $0.running } }

    /// The steps of the last ``suspend()`` that reached the hypervisor, if one did.
    public var lastTiming: Timing? { state.withLock { $0.timing } }

    /// After the last ``suspend()`` came back ``Result/resumed``: waits at most `timeout`
    /// until every device has gone through its new handshake and is Connected; the moment
    /// the last one was. Nil when no suspend resumed, a device ended first, or time ran out.
    public func reconnected(timeout: Duration) async -> ContinuousClock.Instant? {
        guard let devices = await reconnectedDevices(timeout: timeout) else { return nil }
        // With no device there is nothing to wait for: the resume itself.
        return devices.map(\.at).max() ?? lastTiming?.resumed
    }

    /// ``reconnected(timeout:)`` for each device: its frontend path and the moment it was
    /// Connected again, in the order the devices resumed.
    public func reconnectedDevices(timeout: Duration) async -> [(path: String, at: ContinuousClock.Instant)]? {
        guard let task = state.withLock({ $0.reconnection }) else { return nil }
        return await withTaskGroup(of: [(path: String, at: ContinuousClock.Instant)]??.self) { group in
            group.addTask { await task.value }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .some(nil)
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? nil
        }
    }

    /// Quiesces every device, suspends the domain, and resumes every device with the
    /// outcome (Linux's `do_suspend`). Returns ``Result/busy`` at once while another
    /// suspend runs. Each device is quiesced in turn (its endpoint takes the request
    /// between two handshake steps) and resumed in the same order.
    public func suspend() async -> Result {
        guard let devices = state.withLock({ s -> [XenbusEndpoint]? in
            guard !s.running else { return nil }
            s.running = true
            return s.devices
        }) else { return .busy }
        defer { state.withLock { $0.running = false } }
        let started = ContinuousClock.now
        for device in devices { await device.suspend() }
        let paused = ContinuousClock.now
        let answer = await onOwnThread(named: "xen-suspend") { [hypervisor, timeout] in
            Swift.Result { () throws(HypervisorError) -> SuspendOutcome in try hypervisor.suspend(timeout: timeout) }
        }
        let answered = ContinuousClock.now
        let outcome: SuspendOutcome
        let result: Result
        switch answer {
        case .success(let o):
            outcome = o
            result = o == .resumed ? .resumed : .cancelled
        case .failure(let error):
            logger.error("suspend failed, going on as cancelled: \(error)")
            outcome = .cancelled
            result = .failed(error)
        }
        // Observed before the devices resume, so no state of a new handshake is missed.
        let watches = outcome == .resumed ? devices.map { ($0.path, $0.states()) } : []
        for device in devices { await device.resume(outcome) }
        let timing = Timing(started: started, paused: paused, answered: answered, resumed: .now)
        let reconnection = outcome == .resumed ? Task { await Self.allConnectedAgain(watches) } : nil
        if let reconnection {
            // The hypervisor's own clean-up of the move waited for this (apart, so the
            // program's first requests are not behind it).
            Task { [hypervisor] in
                _ = await reconnection.value
                hypervisor.resumeSettled()
            }
        }
        state.withLock { s in
            s.timing = timing
            s.reconnection?.cancel()
            s.reconnection = reconnection
        }
        logger.info("suspend: \(result)")
        return result
    }

    /// Serves `control/shutdown`: announces `control/feature-suspend` (best effort), then
    /// answers each `suspend` request (acknowledged by ``GuestControl`` first, as Linux
    /// does) with `serving` (by default ``suspend()``; a program adds its own work around
    /// it there), and hands every other request to `otherRequests`. A suspend request
    /// that comes while `serving` runs is acknowledged and ignored. Returns when the
    /// request stream ends (the calling task is cancelled).
    /// - Throws: what setting the watch throws.
    public func run(control: GuestControl,
                    serving: @escaping @Sendable (GuestSuspender) async -> Void = { _ = await $0.suspend() },
                    otherRequests: @escaping @Sendable (ShutdownRequest) async -> Void = { _ in }) async throws(XenStoreError) {
        try? await control.store.write(control.home + "/" + Self.featureKey, "1")
        let requests = try await control.requests()
        let busy = Locked(false)
        await withTaskGroup(of: Void.self) { group in
            for await request in requests {
                guard request == .suspend else {
                    await otherRequests(request)
                    continue
                }
                // Taken here, before `serving` starts, so a second request meanwhile is refused.
                guard busy.withLock({ b in defer { b = true }; return !b }) else {
                    logger.warning("suspend requested while suspending: ignored")
                    continue
                }
                // A task of its own, so a second request meanwhile is read and ignored.
                group.addTask { [self] in
                    await serving(self)
                    busy.withLock { $0 = false }
                }
            }
            group.cancelAll()
        }
    }

    /// For each device, the moment its stream has shown a state other than Connected and
    /// then Connected (its new handshake done), watched side by side; nil if one ends first.
    private static func allConnectedAgain(_ watches: [(String, AsyncStream<XenbusState>)]) async
        -> [(path: String, at: ContinuousClock.Instant)]? {
        await withTaskGroup(of: (Int, ContinuousClock.Instant?).self) { group in
            for (i, (_, watch)) in watches.enumerated() {
                group.addTask {
                    var left = false
                    for await s in watch {
                        if s != .connected {
                            left = true
                        } else if left {
                            return (i, .now)
                        }
                    }
                    return (i, nil)
                }
            }
            var moments = [ContinuousClock.Instant?](repeating: nil, count: watches.count)
            for await (i, at) in group {
                guard let at else {
                    group.cancelAll()
                    return nil
                }
                moments[i] = at
            }
            return watches.indices.map { (watches[$0].0, moments[$0]!) }
        }
    }
}
