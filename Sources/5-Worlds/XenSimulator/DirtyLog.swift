import Atomics
import XenABI
import XenHypervisor
import XenLocks

/// One domain's log-dirty state: Xen's log-dirty bitmap, fed by two kinds of writer.
///
/// - The domain's own writes to its memory are seen by ``PageWriteTracker``s,
///   one per process that maps the memory (in one process, that process; across
///   processes, the guest's process, whose descriptors the daemon holds).
/// - What other domains write through the domain's grants is marked by the grant
///   code, as Xen's `gnttab_mark_dirty` does: a writable pin's frame when the pin
///   is dropped (an unmap, the end of a grant copy into the frame), every frame
///   pinned writable at each read-and-clear (a mapping may be written at any time
///   while it exists), and across processes, dom0's grant copies, which never
///   reach the daemon, in ``grantBits``: a bitmap in a memfd the daemon shares
///   with dom0's processes, each setting the bit of the frame it copied into.
final class DirtyLog: @unchecked Sendable {
    // @unchecked: `trackers` and `owned` are guarded by `lock`; `grantBits` is
    // only reached through atomics.
    let frameCount: Int
    /// One bit per frame, set by grant writers while logging is on.
    let grantBits: SharedMemory
    private let on = ManagedAtomic<Bool>(false)
    private let lock = Lock()
    private var trackers: [PageWriteTracker] = []
    /// Trackers made for this log alone, closed when it stops.
    private var owned: Set<ObjectIdentifier> = []
    /// What a failed read-and-clear had already taken (a scan re-protects what it
    /// returns): given with the next one, so no write is lost to an error.
    private var carried: DirtyBitmap?

    init(frames: Int, name: String) throws(HypervisorError) {
        frameCount = frames
        let words = (frames + 63) / 64
        grantBits = try SharedMemory(name: name, pages: max(1, (words * 8 + XenPage.size - 1) / XenPage.size))
    }

    var wordCount: Int { (frameCount + 63) / 64 }

    private func word(_ i: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (grantBits.base + i * 8).assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
    }

    /// Whether logging is on.
    var isLogging: Bool {
        // relaxed: a hint for the grant paths; start/stop order under `lock`.
        on.load(ordering: .relaxed)
    }

    /// A grant writer wrote `frame` (ignored while logging is off).
    func mark(_ frame: UInt64) {
        guard isLogging, frame < UInt64(frameCount) else { return }
        let f = Int(frame)
        // relaxed: the bit is read by an exchange at read-and-clear; the data the
        // writer put in the frame is ordered by the pin's release, not by the bit.
        _ = word(f >> 6).loadThenBitwiseOr(with: 1 << UInt64(f & 63), ordering: .relaxed)
    }

    /// Starts logging with `trackers` armed; those in `owning` are closed when it stops.
    func start(trackers new: [PageWriteTracker], owning: [PageWriteTracker] = []) throws(HypervisorError) {
        try lock.withLock { () throws(HypervisorError) in
            guard !isLogging else { throw .errno(.resourceBusy, "log-dirty is on already") }
            for (i, t) in new.enumerated() {
                do throws(HypervisorError) { try t.arm() } catch {
                    for done in new[..<i] { done.disarm() }
                    throw error
                }
            }
            // relaxed: nothing reads these words until logging is on (below).
            for i in 0..<wordCount { word(i).store(0, ordering: .relaxed) }
            trackers = new
            owned = Set(owning.map(ObjectIdentifier.init))
            // releasing: the cleared words before any writer sees logging on.
            on.store(true, ordering: .releasing)
        }
    }

    /// A writer process that appeared while logging (a guest joining): armed at once.
    func add(_ tracker: PageWriteTracker) throws(HypervisorError) {
        try lock.withLock { () throws(HypervisorError) in
            guard isLogging else { return }
            try tracker.arm()
            trackers.append(tracker)
        }
    }

    /// Frames written since the last call (or start), cleared: the trackers'
    /// scans, the grant writers' bits, and `writable` (frames pinned writable now).
    func readAndClear(writable: [UInt64]) throws(HypervisorError) -> DirtyBitmap {
        try lock.withLock { () throws(HypervisorError) -> DirtyBitmap in
            guard isLogging else { throw .errno(.invalidArgument, "log-dirty is off") }
            var bitmap = carried ?? DirtyBitmap(frameCount: frameCount)
            carried = nil
            for t in trackers {
                do throws(HypervisorError) { try t.collect(into: &bitmap) } catch {
                    carried = bitmap
                    throw error
                }
            }
            for i in 0..<wordCount {
                // acquiringAndReleasing: one exchange per word, so a bit set
                // concurrently is either in this bitmap or in the next.
                let w = word(i).exchange(0, ordering: .acquiringAndReleasing)
                if w != 0 { bitmap.formUnion(word: w, at: i) }
            }
            for f in writable { bitmap.insert(FrameNumber(f)) }
            return bitmap
        }
    }

    /// Stops logging: every tracker disarmed (write protection dropped), the ones
    /// made for this log closed. Returns false when logging was off.
    @discardableResult
    func stop() -> Bool {
        lock.withLock {
            guard isLogging else { return false }
            // releasing: pairs with start's; grant writers stop marking.
            on.store(false, ordering: .releasing)
            for t in trackers {
                if owned.contains(ObjectIdentifier(t)) { t.close() } else { t.disarm() }
            }
            trackers = []
            owned = []
            carried = nil
            return true
        }
    }
}
