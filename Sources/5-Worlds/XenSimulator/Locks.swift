import Atomics

import CXen
import Glibc

/// A one-word spin lock at an address the caller owns (one per event port).
/// Held for a few instructions (and at most one eventfd write), so a short
/// spin then yielding the CPU beats parking a thread.
struct SpinLock {
    let word: UnsafeAtomic<UInt32>

    @inline(__always) func lock() {
        var spins = 0
        // acquiring: nothing done under the lock may move before taking it.
        while !word.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged {
            spins += 1
            if spins < 64 { cxen_cpu_relax() } else { sched_yield() }
        }
    }

    @inline(__always) func unlock() {
        // releasing: everything done under the lock is visible to the next holder.
        word.store(0, ordering: .releasing)
    }
}
