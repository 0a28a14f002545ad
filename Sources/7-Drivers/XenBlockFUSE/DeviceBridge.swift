import CFuseFile
import Dispatch
import Glibc
import NBDProtocol
import XenBlockExport
import XenLocks

/// Runs a device's `async` calls for libfuse's worker threads.
///
/// Aligned reads and writes are handed over (``readAsync(_:at:count:)``,
/// ``writeAsync(_:at:from:count:)``) and answered from the device's completion, so a
/// program's whole queue reaches the ring. The rest (read-modify-writes, flush, discard)
/// the worker waits for on a semaphore: those threads are libfuse's, never the cooperative
/// pool's, so blocking them is fine. Either way a request that does not end within the
/// timeout is answered `EIO` (a write answered so no longer keeps a read-modify-write out:
/// by then the device has failed, and the program was told). Each request owns its buffer, so a call that outlives its
/// answer (a stuck backend) writes into memory that is still its own, never into a
/// finished reply.
final class DeviceBridge: @unchecked Sendable {
    // @unchecked: `device` and `timeout` are immutable; `inFlight` is locked.
    let device: any BlockExportDevice
    let timeout: Duration
    /// Handed-over requests not yet answered, so the completion and the watchdog answer
    /// each exactly once.
    private let inFlight = Locked<[ObjectIdentifier: HandedOver]>([:])
    private let watchdog: DispatchSourceTimer

    init(device: any BlockExportDevice, timeout: Duration) {
        self.device = device
        self.timeout = timeout
        watchdog = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "fuse request watchdog"))
        let period = min(timeout / 4, .seconds(1))
        let (s, a) = period.components
        watchdog.schedule(deadline: .now(), repeating: .nanoseconds(Int(clamping: max(1_000_000, s * 1_000_000_000 + a / 1_000_000_000))))
        watchdog.setEventHandler { [weak self] in self?.expire() }
        watchdog.resume()
    }

    deinit { watchdog.cancel() }

    /// Stops the watchdog, once the session has ended and every request was answered.
    func close() { watchdog.cancel() }

    /// A request handed over by the C glue, with its buffer.
    private final class HandedOver: @unchecked Sendable {
        // @unchecked: `buffer` is written by the device task only; the answer is given once
        // (see `answer`).
        let request: OpaquePointer
        let buffer: UnsafeMutableRawBufferPointer
        let deadline: ContinuousClock.Instant

        init(request: OpaquePointer, count: Int, deadline: ContinuousClock.Instant) {
            self.request = request
            buffer = .allocate(byteCount: max(count, 1), alignment: 4096)
            self.deadline = deadline
        }

        deinit { buffer.deallocate() }
    }

    /// Runs `reply` for `item` if nobody has answered it yet.
    private func answer(_ item: HandedOver, _ reply: (OpaquePointer) -> Void) {
        guard inFlight.withLock({ $0.removeValue(forKey: ObjectIdentifier(item)) }) != nil else { return }
        reply(item.request)
    }

    /// Answers `EIO` to every handed-over request past its deadline.
    private func expire() {
        let now = ContinuousClock.now
        let late = inFlight.withLock { pending -> [HandedOver] in
            let late = pending.values.filter { $0.deadline <= now }
            for item in late { pending.removeValue(forKey: ObjectIdentifier(item)) }
            return late
        }
        for item in late { cfuse_request_reply_error(item.request, EIO) }
    }

    /// Starts `body` on the device's executor for a handed-over request; `done` answers it.
    private func start(_ item: HandedOver, _ body: @escaping @Sendable (any BlockExportDevice, UnsafeMutableRawBufferPointer) async throws -> Void,
                       done: @escaping @Sendable (OpaquePointer) -> Void) {
        inFlight.withLock { $0[ObjectIdentifier(item)] = item }
        let device = device
        let work: @Sendable () async -> Void = { [self] in
            do {
                try await body(device, item.buffer)
                answer(item, done)
            } catch {
                let code = Self.errno(of: error)
                answer(item) { cfuse_request_reply_error($0, code) }
            }
        }
        if let executor = device.exportExecutor {
            Task(executorPreference: executor) { await work() }
        } else {
            Task { await work() }
        }
    }

    /// Reads `count` bytes at `offset` (whole sectors) and answers `request` with them.
    func readAsync(_ request: OpaquePointer, at offset: UInt64, count: Int) {
        let item = HandedOver(request: request, count: count, deadline: .now + timeout)
        start(item, { device, buffer in
            try await device.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
        }, done: { cfuse_request_reply_read($0, item.buffer.baseAddress, count) })
    }

    /// Writes `count` bytes of `data` (copied before this returns) at `offset` (whole
    /// sectors) and answers `request`.
    func writeAsync(_ request: OpaquePointer, at offset: UInt64, from data: UnsafeRawPointer, count: Int) {
        let item = HandedOver(request: request, count: count, deadline: .now + timeout)
        item.buffer.baseAddress!.copyMemory(from: data, byteCount: count)
        start(item, { device, buffer in
            try await device.write(at: offset, from: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }, done: { cfuse_request_reply_write($0) })
    }

    /// A request's buffer and outcome, shared by the waiting thread and the task.
    private final class Request: @unchecked Sendable {
        // @unchecked: `buffer` is written by the task before `done.signal()` and read by
        // the waiter after `done.wait()`; `result` likewise.
        let buffer: UnsafeMutableRawBufferPointer
        var result: Int32 = 0
        let done = DispatchSemaphore(value: 0)

        init(count: Int) {
            buffer = .allocate(byteCount: max(count, 1), alignment: 4096)
        }

        deinit { buffer.deallocate() }
    }

    /// Runs `body` on the device's executor and waits for it; 0 or a negative errno
    /// (`-EIO` if it does not end within the timeout).
    private func perform(_ request: Request, _ body: @escaping @Sendable (any BlockExportDevice, UnsafeMutableRawBufferPointer) async throws -> Void) -> Int32 {
        let device = device
        let work: @Sendable () async -> Void = {
            do {
                try await body(device, request.buffer)
            } catch {
                request.result = -Self.errno(of: error)
            }
            request.done.signal()
        }
        if let executor = device.exportExecutor {
            Task(executorPreference: executor) { await work() }
        } else {
            Task { await work() }
        }
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = max(0, seconds) * 1_000_000_000 + attoseconds / 1_000_000_000
        guard request.done.wait(timeout: .now() + .nanoseconds(Int(clamping: nanoseconds))) == .success else { return -EIO }
        return request.result
    }

    /// The errno a program sees for a device error: `EINVAL` and `ENOSPC` for what the
    /// request got wrong, `EROFS` for a read-only disk, `EIO` for everything else.
    static func errno(of error: any Error) -> Int32 {
        guard let known = error as? any NBDErrnoConvertible else { return EIO }
        switch known.nbdErrno {
        case .invalid, .overflow: return EINVAL
        case .noSpace: return ENOSPC
        case .permission: return EROFS
        case .noMemory: return ENOMEM
        default: return EIO
        }
    }

    func read(at offset: UInt64, into out: UnsafeMutableRawPointer, count: Int) -> Int32 {
        let request = Request(count: count)
        let r = perform(request) { device, buffer in
            try await device.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
        }
        if r == 0 { out.copyMemory(from: request.buffer.baseAddress!, byteCount: count) }
        return r
    }

    func write(at offset: UInt64, from data: UnsafeRawPointer, count: Int) -> Int32 {
        let request = Request(count: count)
        request.buffer.baseAddress!.copyMemory(from: data, byteCount: count)
        return perform(request) { device, buffer in
            try await device.write(at: offset, from: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    func flush() -> Int32 {
        perform(Request(count: 0)) { device, _ in try await device.flush() }
    }

    func discard(at offset: UInt64, length: UInt64) -> Int32 {
        perform(Request(count: 0)) { device, _ in try await device.discard(at: offset, length: length) }
    }
}
