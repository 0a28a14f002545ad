import Atomics
import CXen
import XenABI
import XenHypervisor

/// One domain's 2-level event-channel state: the pending and mask bitmaps in a
/// page laid out as Xen's `shared_info` (`evtchn_pending[]`, `evtchn_mask[]`,
/// one `xen_ulong_t` word per 64 ports), and the port table.
///
/// Each port has a one-word spin lock. A port's table slot changes only with
/// the hypervisor's event control lock held *and* the slot's lock (and, for an
/// interdomain pair, both slots' locks), so `notify`, which holds only the
/// sending port's lock, sees a stable pair without any global lock.
///
/// A peer's `EventDomain` is reached unretained (`Slot.peer`) only under the
/// sending port's lock, and a teardown closes every port of the dying domain
/// under both ends' locks first: once it is done, no slot refers to it, and it
/// is freed with its `SimulatedDomain` (a domain must not cost memory after it
/// is gone: thousands of guests come and go in a daemon's life).
final class EventDomain: @unchecked Sendable {
    // @unchecked: slots are guarded by their port locks as described above;
    // the bitmaps are only accessed atomically.

    /// Ports of the 2-level ABI on a 64-bit guest (`EVTCHN_2L_NR_CHANNELS`).
    static let portLimit = Int(EventPort.twoLevelLimit)
    static let bitsPerWord = MemoryLayout<xen_ulong_t>.size * 8

    /// What a port is, as Xen's `ECS_*` states (only those the simulator models).
    enum State: Equatable {
        case free
        /// `ECS_UNBOUND`: waiting for `remote` to bind.
        case unbound(remote: DomainID)
        /// `ECS_INTERDOMAIN`.
        case interdomain(remote: DomainID, port: UInt32)
    }

    struct Slot {
        var state: State = .free
        /// The peer's state, for an interdomain port.
        var peer: Unmanaged<EventDomain>?
        /// The handle the port was bound through; it receives the port's events.
        var handle: Unmanaged<SimulatedEventChannels>?
    }

    let domain: DomainID
    /// A page laid out as Xen's `shared_info`.
    let sharedInfo: SharedMemory
    private let pendingBase: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private let maskBase: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private let locks: UnsafeMutablePointer<UnsafeAtomic<UInt32>.Storage>
    let slots: UnsafeMutablePointer<Slot>

    init(domain: DomainID, machine: String) throws(HypervisorError) {
        precondition(MemoryLayout<shared_info>.size <= XenPage.size, "shared_info fits one page")
        self.domain = domain
        sharedInfo = try SharedMemory(name: "\(machine)-dom\(domain.rawValue)-shared-info", pages: 1)
        let words = Self.portLimit / Self.bitsPerWord
        let pendingOffset = MemoryLayout<shared_info>.offset(of: \.evtchn_pending)!
        let maskOffset = MemoryLayout<shared_info>.offset(of: \.evtchn_mask)!
        // The page is zero-filled (memfd); the bitmaps are from here on only
        // accessed as atomic words.
        pendingBase = (sharedInfo.base + pendingOffset).bindMemory(to: UnsafeAtomic<UInt64>.Storage.self, capacity: words)
        maskBase = (sharedInfo.base + maskOffset).bindMemory(to: UnsafeAtomic<UInt64>.Storage.self, capacity: words)
        locks = .allocate(capacity: Self.portLimit)
        locks.initialize(repeating: .init(0), count: Self.portLimit)
        slots = .allocate(capacity: Self.portLimit)
        slots.initialize(repeating: Slot(), count: Self.portLimit)
        // Every port starts masked, as a guest masks all at boot; binding unmasks.
        for w in 0..<words { maskWord(w).store(~0, ordering: .relaxed) }
    }

    deinit {
        slots.deinitialize(count: Self.portLimit)
        slots.deallocate()
        locks.deinitialize(count: Self.portLimit)
        locks.deallocate()
    }

    @inline(__always) func pendingWord(_ w: Int) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: pendingBase + w) }
    @inline(__always) func maskWord(_ w: Int) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: maskBase + w) }
    @inline(__always) func portLock(_ port: UInt32) -> SpinLock { SpinLock(word: UnsafeAtomic(at: locks + Int(port))) }

    /// Sets `port` pending (Xen's `evtchn_2l_set_pending`). On a 0 to 1
    /// transition of an unmasked port, raises the handle the port belongs to.
    /// The caller holds a lock that keeps the port's slot stable: its own
    /// lock, or its interdomain peer's.
    @inline(__always) func setPending(_ port: UInt32) {
        let w = Int(port) / Self.bitsPerWord
        let bit: UInt64 = 1 << (UInt64(port) % UInt64(Self.bitsPerWord))
        // sequentiallyConsistent (here and in unmask): set-pending-then-read-mask
        // against clear-mask-then-read-pending is Dekker's pattern; a full order
        // guarantees at least one side sees the other, so an event is never lost.
        let was = pendingWord(w).loadThenBitwiseOr(with: bit, ordering: .sequentiallyConsistent)
        if was & bit != 0 { return }  // already pending: that edge still stands
        if maskWord(w).load(ordering: .sequentiallyConsistent) & bit != 0 { return }  // unmask will raise it
        slots[Int(port)].handle?._withUnsafeGuaranteedRef { $0.raise(word: w) }
    }

    /// Ports not free, for leftovers. Caller holds the event control lock.
    func openPorts() -> [Leftovers.Port] {
        var out: [Leftovers.Port] = []
        for p in 1..<Self.portLimit {
            switch slots[p].state {
            case .free: continue
            case .unbound(let r):
                out.append(.init(domain: domain, port: EventPort(UInt32(p)), state: .unbound(remote: r)))
            case .interdomain(let r, let rp):
                out.append(
                    .init(domain: domain, port: EventPort(UInt32(p)), state: .interdomain(remote: r, remotePort: EventPort(rp))))
            }
        }
        return out
    }

    /// The lowest free port above 0 (port 0 is reserved, as in Xen). Caller
    /// holds the event control lock.
    func freePort() -> UInt32? {
        for p in 1..<Self.portLimit where slots[p].state == .free { return UInt32(p) }
        return nil
    }
}
