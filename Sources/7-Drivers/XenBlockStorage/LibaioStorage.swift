import CAIO
import CBlockStorage
import CXen
import Glibc
import SystemPackage

/// A storage engine on Linux native AIO (libaio) over an image file or a block device.
///
/// - `O_DIRECT` reads and writes are `IO_CMD_PREADV`/`IO_CMD_PWRITEV` iocbs from a pool sized to the
///   queue depth, submitted at most two per `io_submit` (`iocbsPerSubmit`); each iocb signals
///   ``completionDescriptor`` (`IOCB_FLAG_RESFD`). Completions are read from the context's
///   ring in this process's memory, as fio's `userspace_reap` does; only a reap that finds
///   none resets the descriptor, and only one that waits enters `io_getevents`. At queue
///   depth 1 on tmpfs the `io_getevents` and the eventfd `read` that every reap made were
///   about 1 µs of a 5 µs round trip through blkfront and blkback.
/// - `O_DIRECT` when the file system accepts it (``ioMode``); then every buffer address,
///   buffer length and offset must be a multiple of ``alignment`` (the file system's
///   `STATX_DIOALIGN`, or the block device's logical block size, else 512) and
///   misaligned operations fail with ``StorageError/Code-swift.enum/misaligned``.
/// - Flush is `fdatasync` and discard `fallocate(PUNCH_HOLE|KEEP_SIZE)`, both done
///   synchronously in `submit` (native AIO has no usable fsync on most file systems);
///   their completions still come back through ``reap(into:timeout:)``. A flush covers
///   the writes completed before it was submitted, as blkif's flush does. On a block
///   device the kernel wants discards aligned to the logical block size (else EINVAL):
///   advertise `discard-granularity` accordingly.
/// - A short transfer is resubmitted for the remainder; an `io_submit` that returns
///   `EAGAIN` keeps the rest queued and retries on the next submit or reap.
/// - Opened buffered, reads and writes are `preadv`/`pwritev` in `submit`: native AIO
///   does buffered I/O inside `io_submit` anyway, and without an iocb, an event and the
///   descriptor's signal for each the whole path does 516k–544k reads a second on tmpfs
///   instead of 468k–473k (`xenpv bench block --buffered --engine libaio`, queue depth 32;
///   writes 465k–467k instead of 427k–461k).
public final class LibaioStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: confined. One queue thread drives it at a time (StorageEngine's rule);
    // it may be handed to that thread.

    /// Whether to open with `O_DIRECT` (shared with ``UringStorage``).
    public typealias DirectIO = StorageDirectIO

    /// How the file ended up open.
    public typealias IOMode = StorageIOMode

    /// The file's size or the block device's (`BLKGETSIZE64`) when opened; it does not follow later changes.
    public let byteCount: UInt64
    /// True when opened read-only: writes and discards fail with ``StorageError/Code-swift.enum/readOnly``.
    public let isReadOnly: Bool
    /// The `O_DIRECT` alignment in bytes (see the type's overview), or 1 for buffered I/O.
    public let alignment: Int
    /// Operations that may be outstanding; the size of the iocb pool and the AIO context.
    public let queueDepth: Int
    /// Operations submitted and not yet reaped.
    public private(set) var outstanding = 0
    /// `.direct` when opened with `O_DIRECT`, `.buffered` otherwise (asked for, or fallen back to).
    public let ioMode: IOMode
    /// True with `O_DIRECT`: the kernel then hands the device one scatter-gather element
    /// per physically contiguous run of the buffers. On a virtio disk without indirect
    /// descriptors each element takes a ring descriptor, so a 128 KiB read over 32
    /// scattered pages takes 34 and only a few such reads fit at the device at once; the
    /// rest queue in the block layer. (The measurement is in the README's block section.)
    public var prefersContiguousBuffers: Bool { ioMode == .direct }
    /// Looks at the kernel's completion ring in this process's memory, as libaio's
    /// `io_getevents` does before its system call: a polling queue thread otherwise
    /// spent a `poll` and an eventfd `read` per pass.
    public var mayHaveCompletions: Bool {
        guard let context else { return true }  // closed: reap says so
        return !ready.isEmpty || pendingCount > 0 || (inKernel > 0 && cbs_aio_ring_has_events(context) != 0)
    }
    /// The image file or block device opened.
    public let path: FilePath
    /// The eventfd every iocb signals (`IOCB_FLAG_RESFD`), also signalled for completions made in `submit`.
    public var completionDescriptor: FileDescriptor { signal.descriptor }

    let fd: FileDescriptor
    // @exclusivity(unchecked): state of the one thread that drives the engine (StorageEngine's
    // rule), touched on every operation; no access can overlap another, so the runtime's
    // checks only cost time (as in BlockFrontQueue).
    @exclusivity(unchecked) private var context: io_context_t?
    private let signal: CompletionSignal
    @exclusivity(unchecked) private var ready: CompletionQueue
    // The iocb pool and per-iocb bookkeeping, allocated once for the queue depth.
    private let iocbs: UnsafeMutablePointer<iocb>
    private let slots: UnsafeMutablePointer<Slot>
    private let freeList: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var freeCount: Int
    private let pending: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    @exclusivity(unchecked) private var pendingCount = 0
    private let events: UnsafeMutablePointer<io_event>
    @exclusivity(unchecked) private var inKernel = 0
    @exclusivity(unchecked) private var closed = false

    /// The `io_submit` funnel: tests replace it to play EAGAIN, partial acceptance or a
    /// refused iocb, which a healthy kernel rarely shows. Returns what io_submit returns.
    typealias IOSubmit = (io_context_t, Int, UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>) -> Int32
    var ioSubmit: IOSubmit = { ctx, n, cbs in io_submit(ctx, n, cbs) }
    /// The `io_getevents` funnel, for tests that count the system calls a reap makes.
    typealias IOGetEvents = (io_context_t, Int, Int, UnsafeMutablePointer<io_event>, UnsafeMutablePointer<timespec>) -> Int32
    var ioGetEvents: IOGetEvents = { ctx, min, nr, events, ts in io_getevents(ctx, min, nr, events, ts) }

    private struct Slot {
        var tag: UInt64 = 0
        var isWrite = false
        var offset: UInt64 = 0
        var buffers: UnsafeMutablePointer<iovec>? = nil
        var bufferCount = 0
        var total = 0
        var done = 0
    }

    /// Opens `path` (an image file or a block device) and sets up an AIO context for
    /// `queueDepth` outstanding operations.
    public convenience init(path: FilePath, readOnly: Bool = false, directIO: DirectIO = .preferred, queueDepth: Int = 64) throws(StorageError) {
        try self.init(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth,
                      open: StorageFile.systemOpen)
    }

    /// The open funnel, so a test can make `O_DIRECT` fail as tmpfs once did.
    typealias OpenRequest = StorageOpenRequest

    init(path: FilePath, readOnly: Bool, directIO: DirectIO, queueDepth: Int,
         open: StorageFile.Open) throws(StorageError) {
        precondition(queueDepth >= 1 && queueDepth <= 65536, "queue depth 1...65536")
        let file = try StorageFile(path: path, readOnly: readOnly, directIO: directIO, open: open)
        fd = file.fd
        self.path = path
        self.ioMode = file.ioMode
        self.isReadOnly = readOnly
        self.queueDepth = queueDepth
        byteCount = file.byteCount
        alignment = file.alignment
        do throws(StorageError) {
            signal = try CompletionSignal()
        } catch {
            try? file.fd.close()
            throw error
        }

        ready = CompletionQueue(capacity: queueDepth)
        iocbs = .allocate(capacity: queueDepth)
        iocbs.initialize(repeating: iocb(), count: queueDepth)
        slots = .allocate(capacity: queueDepth)
        slots.initialize(repeating: Slot(), count: queueDepth)
        freeList = .allocate(capacity: queueDepth)
        for i in 0..<queueDepth { freeList[i] = Int32(queueDepth - 1 - i) }
        freeCount = queueDepth
        pending = .allocate(capacity: queueDepth)
        pending.initialize(repeating: nil, count: queueDepth)
        events = .allocate(capacity: queueDepth)
        events.initialize(repeating: io_event(), count: queueDepth)

        var ctx: io_context_t? = nil
        let r = io_setup(Int32(queueDepth), &ctx)
        guard r == 0 else {
            let e = Errno(rawValue: -r)
            close()
            throw StorageError(.io(e), "io_setup(\(queueDepth)) (see /proc/sys/fs/aio-max-nr)")
        }
        context = ctx
    }

    deinit {
        close()
        iocbs.deallocate()
        slots.deallocate()
        freeList.deallocate()
        pending.deallocate()
        events.deallocate()
    }

    // MARK: submit

    /// Accepts a prefix of `operations` (at most `queueDepth - outstanding`): reads and writes become iocbs handed to `io_submit` two at a time; flushes, discards and refusals complete before it returns. Throws `.closed` after ``close()``; any other failure comes back in the operation's completion.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        guard !closed, context != nil else { throw StorageError(.closed, "libaio storage \(path) is closed") }
        let accepted = min(operations.count, queueDepth - outstanding)
        for i in 0..<accepted {
            let op = operations[i]  // an index loop: generic slice iteration allocates in debug builds
            if let refusal = StorageChecks.refusal(op, byteCount: byteCount, readOnly: isReadOnly, alignment: alignment) {
                ready.push(StorageCompletion(tag: op.tag, outcome: .failure(refusal)))
                continue
            }
            switch op.kind {
            case .flush:
                let e = cbs_fdatasync(fd.rawValue)
                ready.push(StorageCompletion(tag: op.tag, outcome: e == 0 ? .success(bytes: 0)
                    : .failure(StorageError(.io(Errno(rawValue: e)), "fdatasync \(path)"))))
            case .discard:
                ready.push(StorageCompletion(tag: op.tag, outcome: discard(op)))
            case .read, .write:
                if ioMode == .buffered {
                    ready.push(StorageCompletion(tag: op.tag, outcome: StorageTransfer.now(op, fd: fd, path: path)))
                    continue
                }
                // Never empty: outstanding <= queueDepth and each aio op holds one iocb.
                freeCount -= 1
                let index = Int(freeList[freeCount])
                slots[index] = Slot(tag: op.tag, isWrite: op.kind == .write, offset: op.offset,
                                    buffers: op.buffers, bufferCount: op.bufferCount,
                                    total: Int(op.transferLength), done: 0)
                prepare(index)
            }
        }
        outstanding += accepted
        submitPending()
        // Completions made here (refusals, flush, discard, an iocb io_submit refused) have
        // no kernel event behind them: make the descriptor readable for them ourselves.
        if !ready.isEmpty || pendingCount > 0 { signal.signal() }
        return accepted
    }

    private func discard(_ op: StorageOperation) -> StorageCompletion.Outcome {
        if op.length == 0 { return .success(bytes: 0) }
        let e = cbs_punch_hole(fd.rawValue, Int64(op.offset), Int64(op.length))
        switch e {
        case 0: return .success(bytes: 0)
        case EOPNOTSUPP: return .failure(StorageError(.notSupported, "punch-hole is not supported on \(path)"))
        default: return .failure(StorageError(.io(Errno(rawValue: e)), "fallocate(PUNCH_HOLE) on \(path)"))
        }
    }

    /// Fills iocb `index` from its slot (first submission or the remainder of a short one).
    private func prepare(_ index: Int) {
        let s = slots[index]
        let cb = iocbs + index
        let offset = Int64(s.offset) + Int64(s.done)
        if s.isWrite {
            cbs_io_prep_pwritev(cb, fd.rawValue, s.buffers, Int32(s.bufferCount), offset)
        } else {
            cbs_io_prep_preadv(cb, fd.rawValue, s.buffers, Int32(s.bufferCount), offset)
        }
        cbs_io_set_eventfd(cb, signal.descriptor.rawValue)
        cb.pointee.data = UnsafeMutableRawPointer(bitPattern: index + 1)
        pending[pendingCount] = cb
        pendingCount += 1
    }

    /// iocbs per `io_submit`. Linux plugs a call of more than two (`AIO_PLUG_THRESHOLD`
    /// in fs/aio.c) and lets the device see the batch only when the call ends; then a
    /// batch completes together and the next one is submitted together, a convoy in
    /// which the device idles while the batch turns around. Two per call avoids the plug
    /// at the price of more system calls (the measurement is in the README's block section).
    static let iocbsPerSubmit = 2

    /// Hands queued iocbs to the kernel. EAGAIN keeps the rest for later; an iocb the
    /// kernel refuses outright fails alone.
    private func submitPending() {
        guard let context else { return }
        var start = 0
        while start < pendingCount {
            let r = ioSubmit(context, min(Self.iocbsPerSubmit, pendingCount - start), pending + start)
            if r > 0 {
                start += Int(r)
                inKernel += Int(r)
            } else if r == -EAGAIN || r == -EINTR || r == 0 {
                break
            } else {
                let index = Self.slotIndex(pending[start]!.pointee.data)
                complete(index, .failure(StorageError(.io(Errno(rawValue: Int32(-r))), "io_submit on \(path)")))
                start += 1
            }
        }
        if start > 0 {
            let left = pendingCount - start
            if left > 0 { (pending).update(from: pending + start, count: left) }
            pendingCount = left
        }
    }

    private static func slotIndex(_ data: UnsafeMutableRawPointer?) -> Int {
        Int(bitPattern: data) - 1
    }

    private func complete(_ index: Int, _ outcome: StorageCompletion.Outcome) {
        ready.push(StorageCompletion(tag: slots[index].tag, outcome: outcome))
        slots[index] = Slot()
        freeList[freeCount] = Int32(index)
        freeCount += 1
    }

    // MARK: reap

    /// Moves finished operations into `completions`, reading the kernel's completion ring
    /// without a system call; only when nothing is ready does it reset
    /// ``completionDescriptor``, look again, and wait up to `timeout` (`io_getevents`).
    /// Resubmits the rest of a short transfer and retries iocbs `io_submit` left with
    /// `EAGAIN`. Throws `.closed` after ``close()``.
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard !closed, let context else { throw StorageError(.closed, "libaio storage \(path) is closed") }
        submitPending()
        collect(context, wait: .zero, limit: completions.count)
        var reset = false
        if ready.isEmpty {
            // Reset the descriptor only now, and look again: a completion posted in between
            // is then either seen here or signals the descriptor afresh.
            signal.drain()
            reset = true
            collect(context, wait: timeout, limit: completions.count)
        }
        let n = ready.drain(into: completions, from: 0)
        outstanding -= n
        // Left-overs after a reset (the caller's array was full), or iocbs the kernel refused
        // for now (EAGAIN: the next reap retries): keep the descriptor readable. Without a
        // reset it still is, from the signals of what is left.
        if pendingCount > 0 || (reset && (!ready.isEmpty || (inKernel > 0 && cbs_aio_ring_has_events(context) != 0))) {
            signal.signal()
        }
        return n
    }

    /// Moves kernel completions into `ready` (from the ring in memory, or through
    /// `io_getevents` when it waits up to `wait` for one or the ring's layout is unknown),
    /// resubmitting the remainder of short transfers.
    private func collect(_ context: io_context_t, wait: Duration, limit: Int) {
        guard inKernel > 0 else { return }
        let room = max(1, min(limit - ready.count, inKernel))
        var r = cbs_aio_ring_reap(context, events, Int32(room))
        if r < 0 || (r == 0 && wait > .zero) {
            var ts = timespec()
            let ns = wait.clampedNanoseconds
            ts.tv_sec = Int(ns / 1_000_000_000)
            ts.tv_nsec = Int(ns % 1_000_000_000)
            r = ioGetEvents(context, wait > .zero ? 1 : 0, room, events, &ts)
        }
        guard r > 0 else { return }  // 0: nothing yet; -EINTR: the caller polls again
        inKernel -= Int(r)
        var resubmit = false
        for i in 0..<Int(r) {
            let event = events[i]
            let index = Self.slotIndex(event.data)
            let result = Int(bitPattern: UInt(event.res))
            if result < 0 {
                let s = slots[index]
                complete(index, .failure(StorageError(.io(Errno(rawValue: Int32(-result))),
                    "\(s.isWrite ? "pwritev" : "preadv") of \(s.total) bytes at \(s.offset) on \(path)")))
                continue
            }
            slots[index].done += result
            let s = slots[index]
            if s.done >= s.total {
                complete(index, .success(bytes: s.total))
            } else if result == 0 {
                complete(index, .failure(StorageError(.io(.ioError),
                    "\(s.isWrite ? "pwritev" : "preadv") stopped at \(s.done) of \(s.total) bytes at \(s.offset) on \(path)")))
            } else {
                advance(index, by: result)
                prepare(index)
                resubmit = true
            }
        }
        if resubmit { submitPending() }
    }

    /// Drops the first `count` bytes of slot `index`'s buffers (``StorageTransfer/advance(_:count:by:)``).
    private func advance(_ index: Int, by count: Int) {
        StorageTransfer.advance(&slots[index].buffers, count: &slots[index].bufferCount, by: count)
    }

    // MARK: close

    /// Waits (up to a few seconds) for operations the kernel still holds, so it never
    /// writes into buffers after the caller freed them, then tears down.
    public func close() {
        guard !closed else { return }
        closed = true
        if let context {
            var waited = 0
            while inKernel > 0 && waited < 50 {
                var ts = timespec(tv_sec: 0, tv_nsec: 100_000_000)
                let r = io_getevents(context, 1, min(inKernel, queueDepth), events, &ts)
                if r > 0 { inKernel -= Int(r) } else { waited += 1 }
            }
            _ = io_destroy(context)
            self.context = nil
        }
        signal.close()
        StorageFile.close(fd, ioMode: ioMode, readOnly: isReadOnly)
    }
}
