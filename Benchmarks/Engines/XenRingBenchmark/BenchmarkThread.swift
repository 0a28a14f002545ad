import Glibc

/// A joinable pthread, so each side of the ring has its own pinned thread and
/// no Swift concurrency hop sits on the data path.
struct BenchmarkThread {
    private let thread: pthread_t

    init(_ body: @escaping @Sendable () -> Void) throws(RingBenchmarkError) {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<AnyObject>.fromOpaque(box).release()
            throw RingBenchmarkError(.setup, "pthread_create failed: \(rc)")
        }
        thread = t
    }

    func join() { pthread_join(thread, nil) }
}

/// Seconds on `clock`.
@inline(__always)
func seconds(_ clock: clockid_t) -> Double {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
