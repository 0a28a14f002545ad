import CBlockStorage
import CUringStorage
import Glibc
import SystemPackage

/// A storage engine on io_uring (liburing) over an image file or a block device.
///
/// - Every operation is one submission entry: reads and writes are `IORING_OP_READ`/`WRITE`
///   (one buffer) or `READV`/`WRITEV`, flush is `IORING_OP_FSYNC` with
///   `IORING_FSYNC_DATASYNC`, discard is `IORING_OP_FALLOCATE` with
///   `PUNCH_HOLE|KEEP_SIZE`. A batch given to ``submit(_:)`` costs one `io_uring_enter`
///   (none with SQ polling while the kernel's poller is awake).
/// - Completions are read from the completion ring in this process's memory: a reap
///   that finds some makes no system call. The kernel signals ``completionDescriptor``
///   (a registered eventfd) for each completion it posts, so a queue thread sleeps in
///   `poll` as it does over libaio. Completions made off the driving thread (interrupts,
///   io-wq workers) do not interrupt it while it runs (`IORING_SETUP_COOP_TASKRUN`): they
///   wait for its next system call, and a reap that finds them waiting (`IORING_SQ_TASKRUN`,
///   shared memory) makes one.
/// - Memory a caller registers (``registerBuffer(_:)``: blkback's bounce pages and
///   persistent-grant runs) is pinned by the kernel once, in a slot of the ring's
///   registered-buffer table; a read or write of one buffer inside it goes as
///   `IORING_OP_READ_FIXED`/`WRITE_FIXED`, sparing the page lookup and pin of every
///   operation (the README's storage engines paragraph has what that is worth).
/// - Opening, `O_DIRECT`, alignment, refusals (misaligned, out of range, read-only),
///   short transfers (resubmitted for the remainder; a transfer that makes no progress
///   fails) and errors are those of ``LibaioStorage``: both engines answer every
///   operation the same way. A flush covers the writes completed before it was
///   submitted, as blkif's flush does; unlike libaio's it does not block ``submit(_:)``.
/// - Opened buffered, a write is a `pwritev` in ``submit(_:)``: a copy into the page cache.
///   io_uring cannot do ext4's buffered writes without blocking, so it hands each one to an
///   io-wq worker thread, a wake-up per write (`fio --ioengine=io_uring --direct=0` on ext4
///   here: 28k IOPS at queue depth 1, p50 40–50 µs, against 175k–190k for `psync` and
///   libaio, which write in the submitting call too). Reads stay in the ring: a read that
///   misses the page cache waits for the device, and the ring lets many do so at once.
public final class UringStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: confined. One queue thread drives it at a time (StorageEngine's rule);
    // it may be handed to that thread.

    /// Whether to open with `O_DIRECT`.
    public typealias DirectIO = StorageDirectIO
    /// How the file ended up open.
    public typealias IOMode = StorageIOMode

    /// The file's size or the block device's (`BLKGETSIZE64`) when opened; it does not follow later changes.
    public let byteCount: UInt64
    /// True when opened read-only: writes and discards fail with ``StorageError/Code-swift.enum/readOnly``.
    public let isReadOnly: Bool
    /// The `O_DIRECT` alignment in bytes (the file system's `STATX_DIOALIGN`, the device's logical block size, or 512), or 1 for buffered I/O.
    public let alignment: Int
    /// Operations that may be outstanding; the ring has at least this many submission entries.
    public let queueDepth: Int
    /// Operations submitted and not yet reaped.
    public private(set) var outstanding = 0
    /// `.direct` when opened with `O_DIRECT`, `.buffered` otherwise (asked for, or fallen back to).
    public let ioMode: IOMode
    /// The image file or block device opened.
    public let path: FilePath
    /// True when a kernel thread polls the submission ring (`IORING_SETUP_SQPOLL`).
    public let sqPolling: Bool
    /// True when completions made off the driving thread wait for its next system call
    /// instead of interrupting it (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19; not with SQ polling).
    public var defersOffThreadCompletions: Bool { ring.map { cus_coop_taskrun($0) != 0 } ?? false }
    /// True with `O_DIRECT`, for the reason ``LibaioStorage/prefersContiguousBuffers`` gives.
    public var prefersContiguousBuffers: Bool { ioMode == .direct }
    /// Looks at the completion ring in this process's memory: no system call.
    public var mayHaveCompletions: Bool {
        guard let ring else { return true }  // closed: reap says so
        return !ready.isEmpty || needsSubmit || (inKernel > 0 && (cus_cq_ready(ring) > 0 || cus_taskrun_pending(ring) != 0))
    }
    /// The eventfd registered with the ring, also signalled for completions made in ``submit(_:)`` (refusals).
    public var completionDescriptor: FileDescriptor { signal.descriptor }
    /// Reads and writes handed to the kernel as fixed-buffer operations (their buffer
    /// inside memory given to ``registerBuffer(_:)``), first attempts and remainders alike.
    @exclusivity(unchecked) public private(set) var fixedBufferOperations = 0
    /// Slots of the registered-buffer table, made at the first ``registerBuffer(_:)``.
    public static let registeredBufferSlots = 2048

    let fd: FileDescriptor
    // @exclusivity(unchecked): as in LibaioStorage.
    @exclusivity(unchecked) private var ring: OpaquePointer?
    private let signal: CompletionSignal
    @exclusivity(unchecked) private var ready: CompletionQueue
    private let slots: UnsafeMutablePointer<Slot>
    private let freeList: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var freeCount: Int
    private let cqes: UnsafeMutablePointer<cus_completion>
    /// Operations with an entry in the ring (queued or at the kernel), not yet completed.
    @exclusivity(unchecked) private var inKernel = 0
    /// Entries queued in the submission ring that the kernel has not taken (a submit failed).
    @exclusivity(unchecked) private var needsSubmit = false
    /// Memory registered with the ring; nil until the first registration, and for good
    /// once the kernel refused the table.
    @exclusivity(unchecked) private var registered: RegisteredBuffers?
    @exclusivity(unchecked) private var registrationRefused = false
    @exclusivity(unchecked) private var closed = false

    /// The `io_uring_submit` funnel: tests replace it to play a kernel that refuses a
    /// submission for a while (`EAGAIN`, `EBUSY`), which a healthy kernel rarely shows.
    typealias RingSubmit = (OpaquePointer) -> Int32
    var ringSubmit: RingSubmit = { cus_submit($0) }

    private struct Slot {
        var tag: UInt64 = 0
        var kind = StorageOperation.Kind.read
        var offset: UInt64 = 0
        var length: UInt64 = 0
        var buffers: UnsafeMutablePointer<iovec>? = nil
        var bufferCount = 0
        var total = 0
        var done = 0
    }

    /// Whether this kernel lets the process use io_uring, asked once: nil when it does,
    /// else why not (`ENOSYS`: no io_uring; `EPERM`: `kernel.io_uring_disabled` or a seccomp filter).
    public static let unavailability: Errno? = {
        let e = cus_probe()
        return e == 0 ? nil : Errno(rawValue: e)
    }()

    /// Opens `path` (an image file or a block device) and sets up a ring for `queueDepth`
    /// outstanding operations. `sqPollIdle` non-nil: a kernel thread polls the submission
    /// ring and sleeps after that long without work (it costs a core while it spins).
    public convenience init(path: FilePath, readOnly: Bool = false, directIO: DirectIO = .preferred, queueDepth: Int = 64,
                            sqPollIdle: Duration? = nil) throws(StorageError) {
        try self.init(path: path, readOnly: readOnly, directIO: directIO, queueDepth: queueDepth, sqPollIdle: sqPollIdle,
                      open: StorageFile.systemOpen)
    }

    init(path: FilePath, readOnly: Bool, directIO: DirectIO, queueDepth: Int, sqPollIdle: Duration?,
         open: StorageFile.Open) throws(StorageError) {
        precondition(queueDepth >= 1 && queueDepth <= 32768, "queue depth 1...32768")
        let file = try StorageFile(path: path, readOnly: readOnly, directIO: directIO, open: open)
        fd = file.fd
        self.path = path
        ioMode = file.ioMode
        isReadOnly = readOnly
        self.queueDepth = queueDepth
        byteCount = file.byteCount
        alignment = file.alignment
        sqPolling = sqPollIdle != nil
        do throws(StorageError) {
            signal = try CompletionSignal()
        } catch {
            try? file.fd.close()
            throw error
        }
        ready = CompletionQueue(capacity: queueDepth)
        slots = .allocate(capacity: queueDepth)
        slots.initialize(repeating: Slot(), count: queueDepth)
        freeList = .allocate(capacity: queueDepth)
        for i in 0..<queueDepth { freeList[i] = Int32(queueDepth - 1 - i) }
        freeCount = queueDepth
        cqes = .allocate(capacity: queueDepth)
        cqes.initialize(repeating: cus_completion(), count: queueDepth)

        var error: Int32 = 0
        let idleMilliseconds = UInt32(clamping: (sqPollIdle ?? .zero).clampedNanoseconds / 1_000_000)
        guard let made = cus_ring_open(UInt32(queueDepth), sqPolling ? 1 : 0, idleMilliseconds, &error) else {
            close()
            throw StorageError(.io(Errno(rawValue: error)), "io_uring_queue_init(\(queueDepth)) for \(path)")
        }
        ring = made
        let e = cus_ring_register_eventfd(made, signal.descriptor.rawValue)
        guard e == 0 else {
            close()
            throw StorageError(.io(Errno(rawValue: e)), "io_uring_register_eventfd for \(path)")
        }
    }

    deinit {
        close()
        slots.deallocate()
        freeList.deallocate()
        cqes.deallocate()
    }

    // MARK: submit

    /// Accepts a prefix of `operations` (at most `queueDepth - outstanding`): each becomes
    /// a submission entry, and the batch is handed to the kernel in one `io_uring_submit`;
    /// refusals complete before it returns. Throws `.closed` after ``close()``; any other
    /// failure comes back in the operation's completion.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        guard !closed, let ring else { throw StorageError(.closed, "io_uring storage \(path) is closed") }
        let accepted = min(operations.count, queueDepth - outstanding)
        var madeHere = false
        for i in 0..<accepted {
            let op = operations[i]  // an index loop: generic slice iteration allocates in debug builds
            if let refusal = StorageChecks.refusal(op, byteCount: byteCount, readOnly: isReadOnly, alignment: alignment) {
                ready.push(StorageCompletion(tag: op.tag, outcome: .failure(refusal)))
                madeHere = true
                continue
            }
            if op.kind == .discard && op.length == 0 {
                ready.push(StorageCompletion(tag: op.tag, outcome: .success(bytes: 0)))
                madeHere = true
                continue
            }
            if op.kind == .write && ioMode == .buffered {
                ready.push(StorageCompletion(tag: op.tag, outcome: StorageTransfer.now(op, fd: fd, path: path)))
                madeHere = true
                continue
            }
            // Never empty: outstanding <= queueDepth and each operation in the ring holds one slot.
            freeCount -= 1
            let index = Int(freeList[freeCount])
            // The refusal checks bound offset and length by byteCount, so they fit an Int.
            let total = op.kind == .read || op.kind == .write ? Int(op.transferLength) : 0
            slots[index] = Slot(tag: op.tag, kind: op.kind, offset: op.offset, length: op.length,
                                buffers: op.buffers, bufferCount: op.bufferCount, total: total, done: 0)
            if !prepare(ring, index) { madeHere = true }
        }
        outstanding += accepted
        if needsSubmit { handToKernel(ring) }
        // Completions made here have no kernel completion behind them, and entries the kernel
        // refused need a reap to retry: signal for them ourselves. (Not for completions left
        // over from a reap: the descriptor has stayed readable for them. A write per submit
        // for those cost a system call per batch.)
        if madeHere || needsSubmit { signal.signal() }
        return accepted
    }

    /// Queues slot `index`'s entry (its first, or the remainder of a short transfer);
    /// false if it failed at once instead (its completion is in `ready`).
    @discardableResult
    private func prepare(_ ring: OpaquePointer, _ index: Int) -> Bool {
        let s = slots[index]
        let data = UInt64(index + 1)
        let e: Int32
        switch s.kind {
        case .read, .write:
            let at = s.offset + UInt64(s.done)
            // The iovec read once: the lookup and the entry see the same buffer.
            if s.bufferCount == 1, case let piece = s.buffers![0], let base = piece.iov_base,
               let slot = registered?.slot(holding: base, length: piece.iov_len) {
                // The kernel pinned this memory once; no page lookup per operation. (A region
                // is at most 1 GiB, the kernel's limit, so the length fits.)
                let length = UInt32(clamping: piece.iov_len)
                e = s.kind == .read
                    ? cus_prep_read_fixed(ring, fd.rawValue, base, length, at, Int32(slot), data)
                    : cus_prep_write_fixed(ring, fd.rawValue, base, length, at, Int32(slot), data)
                if e == 0 { fixedBufferOperations += 1 }
            } else if s.kind == .read {
                e = cus_prep_readv(ring, fd.rawValue, s.buffers, UInt32(s.bufferCount), at, data)
            } else {
                e = cus_prep_writev(ring, fd.rawValue, s.buffers, UInt32(s.bufferCount), at, data)
            }
        case .flush:
            e = cus_prep_fdatasync(ring, fd.rawValue, data)
        case .discard:
            e = cus_prep_punch_hole(ring, fd.rawValue, s.offset, s.length, data)
        }
        guard e == 0 else {
            // The submission ring has an entry per slot: full means entries the kernel has
            // not taken yet (SQ polling behind); fail this one rather than wait.
            complete(index, .failure(StorageError(.io(Errno(rawValue: e)), "io_uring submission ring full on \(path)")))
            return false
        }
        inKernel += 1
        needsSubmit = true
        return true
    }

    /// `io_uring_submit`. A refused call (`EAGAIN`, `EBUSY`, `EINTR`) leaves the entries
    /// queued; the next submit or reap retries.
    private func handToKernel(_ ring: OpaquePointer) {
        let r = ringSubmit(ring)
        if r < 0 {
            needsSubmit = true
        } else {
            needsSubmit = !sqPolling && cus_sq_unsubmitted(ring) > 0
        }
    }

    private func complete(_ index: Int, _ outcome: StorageCompletion.Outcome) {
        ready.push(StorageCompletion(tag: slots[index].tag, outcome: outcome))
        slots[index] = Slot()
        freeList[freeCount] = Int32(index)
        freeCount += 1
    }

    // MARK: reap

    /// Moves finished operations into `completions`, reading the completion ring without a
    /// system call; only when it is empty does it reset ``completionDescriptor``, look
    /// again, and wait up to `timeout`. Resubmits the rest of short transfers. Throws
    /// `.closed` after ``close()``.
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard !closed, let ring else { throw StorageError(.closed, "io_uring storage \(path) is closed") }
        if needsSubmit { handToKernel(ring) }
        let limit = completions.count
        collect(ring, limit: limit)
        var reset = false
        if ready.isEmpty {
            // Reset the descriptor only now, and look again: a completion posted in between
            // is then either seen here or signals the descriptor afresh.
            signal.drain()
            reset = true
            collect(ring, limit: limit)
            if ready.isEmpty && inKernel > 0 && timeout > .zero && signal.wait(timeout) {
                collect(ring, limit: limit)
            }
        }
        let n = ready.drain(into: completions, from: 0)
        outstanding -= n
        // Left-overs after a reset (the caller's array was full), or entries the kernel still
        // refuses (the next reap retries): keep the descriptor readable.
        if needsSubmit || (reset && (!ready.isEmpty || (inKernel > 0 && cus_cq_ready(ring) > 0))) { signal.signal() }
        return n
    }

    /// Moves the completion ring's entries into `ready`, as many as the caller's array of
    /// `limit` can take (the rest stay in the ring, where ``mayHaveCompletions`` sees them
    /// and for which the descriptor is still readable), resubmitting the remainder of short
    /// transfers.
    private func collect(_ ring: OpaquePointer, limit: Int) {
        // Completions made off this thread wait as task work until it enters the kernel
        // (the ring is COOP_TASKRUN): a thread that polls must enter to see them.
        if inKernel > 0 && cus_taskrun_pending(ring) != 0 { _ = cus_get_events(ring) }
        var resubmit = false
        while inKernel > 0 {
            let room = min(limit - ready.count, queueDepth - ready.count, inKernel)
            guard room > 0 else { break }
            let got = Int(cus_reap(ring, cqes, UInt32(room)))
            guard got > 0 else { break }
            for i in 0..<got {
                inKernel -= 1
                let data = cqes[i].user_data
                guard data >= 1 && data <= UInt64(queueDepth) else { continue }  // not ours
                if finish(ring, Int(data - 1), result: Int(cqes[i].result)) { resubmit = true }
            }
        }
        if resubmit { handToKernel(ring) }
    }

    /// Ends (or continues) slot `index` with the kernel's `result`; true if it queued a
    /// new entry for the remainder.
    private func finish(_ ring: OpaquePointer, _ index: Int, result: Int) -> Bool {
        let s = slots[index]
        if result == -Int(EAGAIN) || result == -Int(EINTR) {
            prepare(ring, index)  // the kernel asks for a retry of the same thing
            return true
        }
        switch s.kind {
        case .flush:
            complete(index, result < 0
                ? .failure(StorageError(.io(Errno(rawValue: Int32(clamping: -result))), "fdatasync \(path)")) : .success(bytes: 0))
            return false
        case .discard:
            if result >= 0 {
                complete(index, .success(bytes: 0))
            } else if result == -Int(EOPNOTSUPP) {
                complete(index, .failure(StorageError(.notSupported, "punch-hole is not supported on \(path)")))
            } else {
                complete(index, .failure(StorageError(.io(Errno(rawValue: Int32(clamping: -result))), "fallocate(PUNCH_HOLE) on \(path)")))
            }
            return false
        case .read, .write:
            if result < 0 {
                complete(index, .failure(StorageError(.io(Errno(rawValue: Int32(clamping: -result))),
                    "\(s.kind == .write ? "pwritev" : "preadv") of \(s.total) bytes at \(s.offset) on \(path)")))
                return false
            }
            slots[index].done += result
            let done = slots[index].done
            if done >= s.total {
                complete(index, .success(bytes: s.total))
                return false
            }
            if result == 0 {
                complete(index, .failure(StorageError(.io(.ioError),
                    "\(s.kind == .write ? "pwritev" : "preadv") stopped at \(done) of \(s.total) bytes at \(s.offset) on \(path)")))
                return false
            }
            advance(index, by: result)
            prepare(ring, index)
            return true
        }
    }

    /// Drops the first `count` bytes of slot `index`'s buffers (``StorageTransfer/advance(_:count:by:)``).
    private func advance(_ index: Int, by count: Int) {
        StorageTransfer.advance(&slots[index].buffers, count: &slots[index].bufferCount, by: count)
    }

    // MARK: registered buffers

    /// Registers `memory` in a slot of the ring's registered-buffer table (made at the first
    /// call: `IORING_REGISTER_BUFFERS2`, sparse, Linux 5.19), pinned by the kernel until
    /// ``unregisterBuffer(_:)``. Nil when the table is full or refused, the memory overlaps a
    /// registered region, or the kernel will not pin it (a grant mapping it cannot take a
    /// long-term pin on): operations on it then go as before.
    public func registerBuffer(_ memory: UnsafeMutableRawBufferPointer) -> Int? {
        guard !closed, let ring, !registrationRefused else { return nil }
        if registered == nil {
            guard cus_ring_register_buffer_slots(ring, UInt32(Self.registeredBufferSlots)) == 0 else {
                registrationRefused = true
                return nil
            }
            registered = RegisteredBuffers(capacity: Self.registeredBufferSlots)
        }
        guard let slot = registered!.slotFor(memory),
              cus_ring_set_buffer(ring, UInt32(slot), memory.baseAddress, memory.count) == 0 else { return nil }
        registered!.record(memory, slot: slot)
        return Int(slot)
    }

    /// Empties the registration's slot; the kernel unpins the memory once no operation
    /// uses it. Nothing after ``close()`` (closing the ring dropped every registration).
    public func unregisterBuffer(_ registration: Int) {
        guard !closed, let ring, registered?.remove(slot: Int32(registration)) == true else { return }
        _ = cus_ring_set_buffer(ring, UInt32(registration), nil, 0)
    }

    // MARK: close

    /// Waits (up to a few seconds) for operations the kernel still holds, so it never
    /// writes into buffers after the caller freed them, then tears the ring down.
    public func close() {
        guard !closed else { return }
        closed = true
        if let ring {
            var waited = 0
            while inKernel > 0 && waited < 50 {
                if needsSubmit { handToKernel(ring) }
                let got = Int(cus_reap(ring, cqes, UInt32(queueDepth)))
                if got > 0 {
                    inKernel -= got
                } else if !signal.wait(.milliseconds(100)) {
                    waited += 1
                } else {
                    signal.drain()
                }
            }
            cus_ring_close(ring)
            self.ring = nil
        }
        signal.close()
        StorageFile.close(fd, ioMode: ioMode, readOnly: isReadOnly)
    }
}
