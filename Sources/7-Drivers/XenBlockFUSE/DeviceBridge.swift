import Dispatch
import Glibc
import NBDProtocol
import XenBlockExport
import XenLocks

/// Runs a device's `async` calls for libfuse's worker threads, which wait for each on a
/// semaphore: those threads are libfuse's, never the cooperative pool's, so blocking them
/// is fine. Each request owns its buffer, so a call that outlives the wait (a stuck
/// backend) writes into memory that is still its own, never into a finished reply.
final class DeviceBridge: @unchecked Sendable {
    // @unchecked: immutable after init.
    let device: any BlockExportDevice
    let timeout: Duration

    init(device: any BlockExportDevice, timeout: Duration) {
        self.device = device
        self.timeout = timeout
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
