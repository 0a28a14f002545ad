import Atomics
import CXen
import Glibc
import SystemPackage
import XenABI
import XenHypervisor

/// An event-channel handle of a simulated domain, shaped like `xenevtchn`:
/// ports bound through it deliver to its own eventfd.
///
/// Delivery follows Xen's 2-level scheme with a per-handle selector word
/// (bit `w` set: word `w` of the domain's pending bitmap may hold a pending,
/// unmasked port of this handle), the way `evtchn_pending_sel` serves a vCPU.
/// The eventfd counts the selector's transitions: whoever moves it from 0 to
/// non-zero writes 1, whoever moves it back to 0 reads 1. So the descriptor is
/// readable exactly while the selector is non-zero, and the selector is
/// non-zero while a port of this handle is pending and unmasked (it may stay
/// set until the next `pending()` after an `unbind`).
///
/// `notify` takes only the sending port's spin lock, allocates nothing, and
/// makes a system call only when it raises an idle handle.
///
/// Errors: a port number beyond the 2-level limit is `EINVAL`; a port not
/// bound through this handle, or bound but not connected (still unbound, or
/// its peer closed), is `ENOTCONN`, the errno of the Linux evtchn driver for a
/// port it does not know. (Xen itself silently drops a send on an unbound
/// port; the simulator reports it so a driver learns its peer is gone.)
public final class SimulatedEventChannels: EventChannels, @unchecked Sendable {
    // @unchecked: mutable state is the atomic words below, and slots guarded
    // as `EventDomain` explains.

    let domain: SimulatedDomain
    let events: EventDomain
    private let eventFD: Int32
    /// [0] selector, [1...64] ports bound through this handle (one bit per
    /// port, words as the domain's bitmaps), [65] closed.
    private let words: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private static let wordCount = EventDomain.portLimit / EventDomain.bitsPerWord

    #if DEBUG
    /// Debug builds only: run between settle's check and its clear, so a test
    /// can hold that race window open. Set before other threads use the handle.
    var settleWindow: (@Sendable () -> Void)?
    #endif

    init(domain: SimulatedDomain) throws(HypervisorError) {
        let fd = cxen_eventfd(0, 1)
        guard fd >= 0 else { throw .errno(Errno(rawValue: errno), "eventfd for an event-channel handle") }
        self.domain = domain
        self.events = domain.events
        eventFD = fd
        words = .allocate(capacity: Self.wordCount + 2)
        words.initialize(repeating: .init(0), count: Self.wordCount + 2)
    }

    deinit {
        // The descriptor outlives close(): a raise in flight never writes to a
        // number the process may have reused.
        Glibc.close(eventFD)
        words.deinitialize(count: Self.wordCount + 2)
        words.deallocate()
    }

    /// The handle's eventfd: readable exactly while a port bound through this handle is pending and unmasked. It stays open until the handle is deinitialised.
    public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: eventFD) }

    @inline(__always) private var selector: UnsafeAtomic<UInt64> { UnsafeAtomic(at: words) }
    @inline(__always) private func bound(_ w: Int) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: words + 1 + w) }
    @inline(__always) private var closedWord: UnsafeAtomic<UInt64> { UnsafeAtomic(at: words + 1 + Self.wordCount) }
    // relaxed: a closed handle is refused on a best-effort basis; the port
    // locks give the real exclusion.
    @inline(__always) var isClosed: Bool { closedWord.load(ordering: .relaxed) != 0 }

    @inline(__always) private func split(_ port: UInt32) -> (word: Int, bit: UInt64) {
        (Int(port) / EventDomain.bitsPerWord, 1 << (UInt64(port) % UInt64(EventDomain.bitsPerWord)))
    }

    @inline(__always) private func isMine(_ port: UInt32) -> Bool {
        events.slots[Int(port)].handle?.toOpaque() == Unmanaged.passUnretained(self).toOpaque()
    }

    // MARK: - The eventfd protocol

    /// Marks word `w` as holding a ready port; the 0 to non-zero transition of
    /// the selector makes the descriptor readable.
    @inline(__always) func raise(word w: Int) {
        // sequentiallyConsistent: the selector's modification order decides who
        // owns each transition; settle's clear-then-recheck relies on it.
        let was = selector.loadThenBitwiseOr(with: 1 << UInt64(w), ordering: .sequentiallyConsistent)
        if was == 0 {
            var one: UInt64 = 1
            while Glibc.write(eventFD, &one, 8) < 0 && errno == EINTR {}
        }
    }

    /// Takes back the one count written for the selector's matching 0 to
    /// non-zero transition. That write may not have landed yet (its thread is
    /// between the transition and the syscall), so wait for it briefly.
    private func consumeSignal() {
        var n: UInt64 = 0
        var spins = 0
        while Glibc.read(eventFD, &n, 8) != 8 {
            guard errno == EAGAIN || errno == EINTR else { return }
            spins += 1
            if spins < 64 { cxen_cpu_relax() } else { sched_yield() }
        }
        // Later raises may have landed too; eventfd reads take the whole count.
        if n > 1 {
            var rest = n - 1
            while Glibc.write(eventFD, &rest, 8) < 0 && errno == EINTR {}
        }
    }

    /// Ports of word `w` that are pending, unmasked and bound through this handle.
    @inline(__always) private func ready(_ w: Int) -> UInt64 {
        // sequentiallyConsistent: ordered with the selector updates around it.
        events.pendingWord(w).load(ordering: .sequentiallyConsistent)
            & ~events.maskWord(w).load(ordering: .sequentiallyConsistent)
            & bound(w).load(ordering: .sequentiallyConsistent)
    }

    /// Clears selector bit `w` if word `w` has nothing ready, then checks again:
    /// a port that became ready in between has set the bit before our clear
    /// (and we see it now) or sets it after (and raises itself).
    private func settle(word w: Int) {
        if ready(w) != 0 { return }
        #if DEBUG
        settleWindow?()
        #endif
        let bit: UInt64 = 1 << UInt64(w)
        let was = selector.loadThenBitwiseAnd(with: ~bit, ordering: .sequentiallyConsistent)
        guard was & bit != 0 else { return }
        if was == bit { consumeSignal() }
        if ready(w) != 0 { raise(word: w) }
    }

    // MARK: - EventChannels

    /// Sets the connected peer port pending, taking only this port's spin lock. Throws `.closed` on a closed handle, `EINVAL` past the 2-level limit, `ENOTCONN` for a port not bound through this handle or without a connected peer.
    public func notify(_ port: EventPort) throws(HypervisorError) {
        try withOwnPortLocked(port, "notify") { (p) throws(HypervisorError) in
            let slot = events.slots[Int(p)]
            guard case .interdomain(_, let remotePort) = slot.state, let peer = slot.peer else {
                throw .errno(.socketNotConnected, "notify: port has no connected peer")
            }
            // Our lock keeps the pair stable: closing either end takes both locks.
            peer._withUnsafeGuaranteedRef { $0.setPending(remotePort) }
        }
    }

    /// Runs `body` on `port` with its spin lock held, after the checks ``notify(_:)`` and
    /// ``unmask(_:)`` share: `.closed` on a closed handle, `EINVAL` past the 2-level limit,
    /// `ENOTCONN` for a port not bound through this handle.
    @inline(__always)
    private func withOwnPortLocked(_ port: EventPort, _ call: StaticString, _ body: (UInt32) throws(HypervisorError) -> Void) throws(HypervisorError) {
        guard !isClosed else { throw HypervisorError(.closed, "\(call) on a closed event-channel handle") }
        let p = port.rawValue
        guard p < UInt32(EventDomain.portLimit) else { throw .errno(.invalidArgument, "\(call): port beyond the 2-level limit") }
        let lock = events.portLock(p)
        lock.lock()
        defer { lock.unlock() }
        guard isMine(p) else { throw .errno(.socketNotConnected, "\(call): port not bound through this handle") }
        try body(p)
    }

    /// Returns the next pending, unmasked port of this handle, masked and its pending bit cleared, or nil; never blocks. Throws `.closed` on a closed handle.
    public func pending() throws(HypervisorError) -> EventPort? {
        guard !isClosed else { throw HypervisorError(.closed, "pending on a closed event-channel handle") }
        while true {
            var sel = selector.load(ordering: .sequentiallyConsistent)
            if sel == 0 { return nil }
            while sel != 0 {
                let w = sel.trailingZeroBitCount
                sel &= sel &- 1
                let port = claim(word: w)
                settle(word: w)
                if let port { return EventPort(port) }
            }
        }
    }

    /// Takes one ready port of word `w`: masks it (as the Linux driver disables
    /// a port's interrupt when it fires) and clears its pending bit.
    private func claim(word w: Int) -> UInt32? {
        var candidates = ready(w)
        while candidates != 0 {
            let b = candidates & (~candidates &+ 1)
            candidates &= candidates &- 1
            let port = UInt32(w * EventDomain.bitsPerWord + b.trailingZeroBitCount)
            // The port lock keeps it from being unbound and rebound under us.
            let lock = events.portLock(port)
            lock.lock()
            defer { lock.unlock() }
            guard isMine(port) else { continue }
            // sequentiallyConsistent: mask before clearing pending, so a notify
            // in between leaves the port pending and masked, never lost.
            let wasMasked = events.maskWord(w).loadThenBitwiseOr(with: b, ordering: .sequentiallyConsistent)
            if wasMasked & b != 0 { continue }  // another consumer took it
            let wasPending = events.pendingWord(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
            if wasPending & b != 0 { return port }
            // Unreachable while we hold the lock (only a claim or unbind clears
            // pending); undo the mask rather than trust that.
            unmaskLocked(port)
        }
        return nil
    }

    /// Clears the port's mask (`evtchn_2l_unmask`); if it was pending meanwhile, the descriptor becomes readable again. Throws `.closed`, `EINVAL` or `ENOTCONN` as ``notify(_:)`` does.
    public func unmask(_ port: EventPort) throws(HypervisorError) {
        try withOwnPortLocked(port, "unmask") { p in unmaskLocked(p) }
    }

    /// Xen's `evtchn_2l_unmask`: clear the mask; if that was a change and the
    /// port is pending, deliver it now.
    private func unmaskLocked(_ p: UInt32) {
        let (w, b) = split(p)
        // sequentiallyConsistent: the other half of setPending's Dekker pair.
        let was = events.maskWord(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
        if was & b != 0 && events.pendingWord(w).load(ordering: .sequentiallyConsistent) & b != 0 {
            raise(word: w)
        }
    }

    /// Allocates a free port unbound for `remote` (`EVTCHNOP_alloc_unbound`; `DOMID_SELF` means this domain). Throws `ESRCH` for an unknown domain, `ENOSPC` when no port is free.
    public func bindUnbound(remote: DomainID) throws(HypervisorError) -> EventPort {
        guard !isClosed else { throw HypervisorError(.closed, "bind on a closed event-channel handle") }
        let hv = try domain.liveHypervisor()
        let remote = remote == .current ? domain.domainID : remote
        let port: UInt32 = try hv.eventControl.withLock { () throws(HypervisorError) -> UInt32 in
            // ESRCH: what EVTCHNOP_alloc_unbound returns for an unknown domain.
            guard hv.domain(remote) != nil else { throw .errno(.noSuchProcess, "bind unbound: no domain \(remote)") }
            guard let p = events.freePort() else { throw .errno(.noSpace, "bind unbound: \(domain.domainID) has no free port") }
            prepare(p)
            let lock = events.portLock(p)
            lock.lock()
            events.slots[Int(p)] = .init(state: .unbound(remote: remote), peer: nil, handle: .passUnretained(self))
            lock.unlock()
            return p
        }
        return EventPort(port)
    }

    /// Binds a new local port to `remotePort` of `remote` (`EVTCHNOP_bind_interdomain`) and, as Xen does, leaves it pending. Throws `ESRCH` for an unknown domain, `EINVAL` unless the remote port is unbound for this domain, `ENOSPC` when no port is free.
    public func bindInterdomain(remote: DomainID, remotePort: EventPort) throws(HypervisorError) -> EventPort {
        guard !isClosed else { throw HypervisorError(.closed, "bind on a closed event-channel handle") }
        let hv = try domain.liveHypervisor()
        let me = domain.domainID
        let remote = remote == .current ? me : remote
        let rp = remotePort.rawValue
        let port: UInt32 = try hv.eventControl.withLock { () throws(HypervisorError) -> UInt32 in
            guard let rd = hv.domain(remote)?.events else {
                throw .errno(.noSuchProcess, "bind interdomain: no domain \(remote)")
            }
            // EINVAL as EVTCHNOP_bind_interdomain: the remote port must be
            // unbound and allocated for this domain.
            guard rp > 0, rp < UInt32(EventDomain.portLimit), rd.slots[Int(rp)].state == .unbound(remote: me) else {
                throw .errno(.invalidArgument, "bind interdomain: \(remote) port \(rp) is not unbound for \(me)")
            }
            guard let p = events.freePort() else { throw .errno(.noSpace, "bind interdomain: \(me) has no free port") }
            prepare(p)
            let local = events.portLock(p)
            let far = rd.portLock(rp)
            local.lock()
            far.lock()
            events.slots[Int(p)] = .init(state: .interdomain(remote: remote, port: rp), peer: .passUnretained(rd), handle: .passUnretained(self))
            rd.slots[Int(rp)].state = .interdomain(remote: me, port: p)
            rd.slots[Int(rp)].peer = .passUnretained(events)
            far.unlock()
            // Xen sets the new local port pending: notifications sent to the
            // remote port while it was unbound may have been lost.
            events.setPending(p)
            local.unlock()
            return p
        }
        return EventPort(port)
    }

    /// Readies a free port's bits before it is published: not pending,
    /// unmasked (binding enables it, as the Linux driver does), ours.
    private func prepare(_ p: UInt32) {
        let (w, b) = split(p)
        // sequentiallyConsistent: simple, and off the hot path.
        _ = events.pendingWord(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
        _ = events.maskWord(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
        _ = bound(w).loadThenBitwiseOr(with: b, ordering: .sequentiallyConsistent)
    }

    /// Closes the port (`evtchn_close`): a connected peer's port falls back to unbound and its notify fails from then on. Throws `ENOTCONN` for a port not bound through this handle.
    public func unbind(_ port: EventPort) throws(HypervisorError) {
        guard !isClosed else { throw HypervisorError(.closed, "unbind on a closed event-channel handle") }
        let p = port.rawValue
        guard p < UInt32(EventDomain.portLimit) else { throw .errno(.invalidArgument, "unbind: port beyond the 2-level limit") }
        let hv = try domain.liveHypervisor()
        try hv.eventControl.withLock { () throws(HypervisorError) in
            guard isMine(p) else { throw .errno(.socketNotConnected, "unbind: port not bound through this handle") }
            closeLocked(p)
        }
        settle(word: split(p).word)
    }

    /// Xen's `evtchn_close`: the port becomes free; an interdomain peer falls
    /// back to unbound (for this domain), so its notify fails from now on.
    /// Caller holds the event control lock.
    func closeLocked(_ p: UInt32) {
        let lock = events.portLock(p)
        lock.lock()
        if case .interdomain(_, let rp) = events.slots[Int(p)].state, let peer = events.slots[Int(p)].peer {
            peer._withUnsafeGuaranteedRef { rd in
                let far = rd.portLock(rp)
                far.lock()
                rd.slots[Int(rp)].state = .unbound(remote: domain.domainID)
                rd.slots[Int(rp)].peer = nil
                far.unlock()
            }
        }
        events.slots[Int(p)] = .init()
        let (w, b) = split(p)
        _ = bound(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
        _ = events.maskWord(w).loadThenBitwiseOr(with: b, ordering: .sequentiallyConsistent)
        _ = events.pendingWord(w).loadThenBitwiseAnd(with: ~b, ordering: .sequentiallyConsistent)
        lock.unlock()
    }

    /// Ports bound through this handle. Caller holds the event control lock.
    func boundPorts() -> [UInt32] {
        var out: [UInt32] = []
        for w in 0..<Self.wordCount {
            var bits = bound(w).load(ordering: .relaxed)
            while bits != 0 {
                out.append(UInt32(w * EventDomain.bitsPerWord + bits.trailingZeroBitCount))
                bits &= bits &- 1
            }
        }
        return out
    }

    /// Closes every port bound through this handle and unregisters it from its domain; later calls throw `.closed`. Calling it again does nothing.
    public func close() {
        // relaxed: the exchange only elects the one closer.
        guard closedWord.exchange(1, ordering: .relaxed) == 0 else { return }
        if let hv = domain.hypervisor {
            hv.eventControl.withLock { for p in boundPorts() { closeLocked(p) } }
        }
        domain.forget(self)
        for w in 0..<Self.wordCount { settle(word: w) }
    }

    /// Closes every port bound through this handle, keeping the handle open (a resume
    /// from a saved copy: the ports went with the old copy, the handle stays usable).
    func closePortsForResume(_ hv: SimulatedHypervisor) {
        hv.eventControl.withLock { for p in boundPorts() { closeLocked(p) } }
        for w in 0..<Self.wordCount { settle(word: w) }
    }

    /// Closes without unregistering from the domain (domain teardown does that).
    func closeForTeardown() {
        guard closedWord.exchange(1, ordering: .relaxed) == 0 else { return }
        for p in boundPorts() { closeLocked(p) }
        for w in 0..<Self.wordCount { settle(word: w) }
    }
}
