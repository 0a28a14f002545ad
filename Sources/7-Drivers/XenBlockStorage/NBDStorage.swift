import CXen
import Foundation
import Glibc
import NBDProtocol
import SystemPackage
import XenLocks
import XenSockets

/// A storage engine on a remote NBD export: one connection, many requests in flight, and
/// a new connection when the server goes away and comes back.
///
/// - The connection opens with the fixed-newstyle handshake and `NBD_OPT_GO`
///   (``NBDExportTerms``): the export's size, its transmission flags, its block size
///   constraints (the minimum becomes ``alignment``).
/// - `submit` sends the requests it takes together (`NBDRequestWriter`: headers and
///   writes' data, straight from the iovecs, in one `sendmsg`) on the caller's thread; a
///   dedicated reader thread takes the replies through a buffer (`StreamInput`: one
///   `recv` for all that wait), matches them by handle, copies a read's data into its
///   iovecs (long data is read straight into them), and posts the completions,
///   signalling ``completionDescriptor`` (an eventfd) once for the replies of one
///   receive. A read or write longer than
///   ``maximumPayload`` goes as several NBD requests, and completes when every part is
///   answered (any part failing fails it).
/// - Flush is `NBD_CMD_FLUSH` when the server offers it (else it succeeds at once: the
///   server has said it has no cache to flush). Discard is `NBD_CMD_WRITE_ZEROES`
///   without `NBD_CMD_FLAG_NO_HOLE` when offered: ``StorageOperation/discard(tag:offset:length:)``
///   promises zeros, which `NBD_CMD_TRIM` does not, and without `NO_HOLE` the server may
///   deallocate as a trim would. Else `NBD_CMD_TRIM` (blkif's discard promises no zeros
///   either); with neither it fails with ``StorageError/Code-swift.enum/notSupported``
///   (``supportsDiscard`` is false: a backend should not advertise discard). An export
///   the server marks read-only is read-only here.
/// - No request carries `NBD_CMD_FLAG_FUA`: blkif has no force-unit-access request (a
///   flush is `NBD_CMD_FLUSH`, and a write barrier only orders requests), so nothing
///   here asks for it.
/// - Nothing is acknowledged before the server answered it: a write completes on the
///   server's reply to that write, a flush on its reply to the flush.
/// - When the connection breaks (end of stream, a reset, a reply with a bad magic, an
///   unknown handle or a structured reply, which was never negotiated) the reader
///   connects again, with backoff, for up to ``reconnectWindow`` (each attempt bounded),
///   redoes the handshake, and re-sends every request that had no reply, in the order
///   they were first submitted (NBD reads and writes are idempotent; a re-sent flush
///   covers the writes the server answered before it, which a server restarted on the
///   same storage holds). Requests submitted meanwhile wait in their slots (at most
///   ``queueDepth``: `submit` takes no more) and go out with the re-sent ones. An export
///   that comes back different (another size, read-only, a feature or block size we
///   relied on gone) is refused: every outstanding request fails with `EIO` and a
///   message saying what changed, and so does every later one; so after a window with
///   no connection.
/// - A request unanswered after ``requestTimeout`` fails alone (`ETIMEDOUT`), connected
///   or not; its handle stays reserved until the server answers (a late read's data is
///   read and dropped) or the connection is replaced. Nothing the server sends traps.
public final class NBDStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: everything in "under lock" is touched only under `lock`; sends on the
    // socket only under `sendLock` (taken before `lock`, never inside it); the rest is
    // set in init, or confined to the submitting thread (StorageEngine's rule).

    /// The export this engine serves.
    public let uri: NBDURI
    /// The export's size in bytes, from `NBD_INFO_EXPORT`.
    public let byteCount: UInt64
    /// True when asked for or when the server sent `NBD_FLAG_READ_ONLY`.
    public let isReadOnly: Bool
    /// The minimum block size the server asked for, or 1.
    public let alignment: Int
    /// Operations that may be outstanding.
    public let queueDepth: Int
    /// Operations submitted and not yet reaped.
    public private(set) var outstanding = 0
    /// What the first handshake settled; every later connection must offer the same export.
    public let terms: NBDExportTerms
    /// How long a request may go unanswered before it fails alone.
    public let requestTimeout: Duration
    /// How long the engine tries to get a connection back after losing it before every
    /// outstanding request fails and the engine gives up.
    public let reconnectWindow: Duration
    /// Whether the server offered `NBD_CMD_WRITE_ZEROES` or `NBD_CMD_TRIM`: discards reach it, else they fail.
    public var supportsDiscard: Bool { terms.canDiscard }
    /// Whether discards go as `NBD_CMD_WRITE_ZEROES` (they read back as zeros) rather than `NBD_CMD_TRIM`.
    public var discardsZero: Bool { terms.flags.contains(.sendWriteZeroes) }
    /// Whether the server offered `NBD_CMD_FLUSH`.
    public var supportsFlush: Bool { terms.flags.contains(.sendFlush) }
    /// The largest part of a read or write sent as one request: the server's maximum
    /// block size, at most 32 MiB (what proto.md lets a client assume without one).
    public let maximumPayload: UInt64
    /// The largest part of a discard sent as one request: the server's maximum block
    /// size when it gave one, else 1 GiB (a length must fit in 32 bits).
    public let maximumEffect: UInt64
    /// The eventfd the reader thread signals for every completion it posts.
    public var completionDescriptor: FileDescriptor { signal.descriptor }
    /// Connections made after the first one (each after the previous one broke).
    public var reconnections: Int { lock.withLock { reconnectCount } }
    /// NBD requests sent again on a new connection because the old one broke before their reply.
    public var resentRequests: Int { lock.withLock { resendCount } }

    private let connectTimeout: Duration
    private let timeoutNanoseconds: UInt64
    private let signal: CompletionSignal
    private let readerDone: CompletionSignal
    private let lock = Lock()
    private let sendLock = Lock()

    // Under lock.
    private var fd: Int32
    private var connected = true
    /// Bumped whenever a connection is lost: a send prepared for an older one is dropped
    /// (the re-send on the new connection carries it).
    private var epoch: UInt64 = 0
    private var ready: CompletionQueue
    private var slots: [Slot]
    private var freeSlots: [Int32]
    private var parents: [Parent]
    private var freeParents: [Int32]
    private var sequence: UInt64 = 0
    private var broken: StorageError?
    private var stopping = false
    private var reconnectCount = 0
    private var resendCount = 0
    private var replyReceiveCount = 0
    private var replyDryReceiveCount = 0

    // The submitting thread's.
    private var closed = false
    private var batch: [Part] = []
    /// Under `sendLock`: the submit's sends and a reconnection's re-sends.
    private var writer = NBDRequestWriter()

    // The reader thread's.
    /// A completion was posted onto an empty queue and the eventfd not signalled yet: the
    /// reader signals once for all the replies one receive brought, before it reads more.
    private var unpublished = false

    /// One NBD request: what it takes to send it (again).
    struct Part {
        var handle: UInt64 = 0
        var command = NBDCommand.read
        var flags = NBDCommandFlags()
        var offset: UInt64 = 0
        var length: UInt32 = 0
        /// The operation's buffers; the part covers `length` bytes of them from `byteStart`.
        var buffers: UnsafeMutablePointer<iovec>? = nil
        var bufferCount = 0
        var byteStart = 0
        /// Submission order, for re-sending in order.
        var sequence: UInt64 = 0

        /// Writes into `out` the iovecs covering this part's bytes of its operation's
        /// buffers; returns how many (at most the operation's buffer count).
        func dataVectors(into out: UnsafeMutablePointer<iovec>) -> Int {
            guard let buffers else { return 0 }
            var skip = byteStart
            var left = Int(length)
            var n = 0
            var i = 0
            while i < bufferCount && left > 0 {
                let available = buffers[i].iov_len
                if skip >= available {
                    skip -= available
                } else {
                    let take = min(available - skip, left)
                    out[n] = iovec(iov_base: buffers[i].iov_base.map { $0 + skip }, iov_len: take)
                    n += 1
                    left -= take
                    skip = 0
                }
                i += 1
            }
            return n
        }
    }

    /// One handle: a part waiting for its reply.
    private struct Slot {
        enum State { case free, inFlight, abandoned }
        var state = State.free
        var generation: UInt32 = 0
        var parent: Int32 = 0
        var part = Part()
    }

    /// One operation: its parts count down to its single completion.
    private struct Parent {
        var tag: UInt64 = 0
        var partsLeft = 0
        /// The completion is posted (early when the operation timed out).
        var done = false
        var failure: StorageError? = nil
        var bytes = 0
        var deadline: UInt64 = 0
    }

    /// The most handles: split requests take one each; the table grows up to this.
    static let maximumSlots = 1 << 20

    /// Connects to `uri`, negotiates the export, and starts the reader thread.
    /// - Parameters:
    ///   - uri: the export.
    ///   - readOnly: serve it read-only even where the server allows writes.
    ///   - queueDepth: operations that may be outstanding (1...65536).
    ///   - requestTimeout: how long one request may wait for its reply before it fails alone.
    ///   - connectTimeout: bounds the first connection and handshake (and each later attempt, with at most 5 s).
    ///   - reconnectWindow: how long to try to get a lost connection back.
    /// - Throws: ``StorageError/Code-swift.enum/closed`` when the server is unreachable, refuses
    ///   the export or breaks the handshake (the message says which).
    public init(uri: NBDURI, readOnly: Bool = false, queueDepth: Int = 64,
                requestTimeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(30),
                reconnectWindow: Duration = .seconds(30)) throws(StorageError) {
        precondition(queueDepth >= 1 && queueDepth <= 65536, "queue depth 1...65536")
        self.uri = uri
        self.queueDepth = queueDepth
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.reconnectWindow = reconnectWindow
        timeoutNanoseconds = UInt64(requestTimeout.clampedNanoseconds)
        let fd = try NBDConnection.connect(uri, timeout: connectTimeout)
        let terms: NBDExportTerms
        do throws(StorageError) {
            terms = try NBDConnection.handshake(fd, export: uri.exportName, uri: uri)
            signal = try CompletionSignal()
            do throws(StorageError) { readerDone = try CompletionSignal() } catch {
                signal.close()
                throw error
            }
        } catch {
            Glibc.close(fd)
            throw error
        }
        // The reader polls; sends keep a bound so a server that stops reading fails them.
        NBDConnection.setTimeouts(fd, requestTimeout)
        self.fd = fd
        self.terms = terms
        byteCount = terms.size
        isReadOnly = readOnly || terms.flags.contains(.readOnly)
        let minimum = UInt64(terms.blockSizes?.minimum ?? 1)
        alignment = Int(minimum)
        // Parts of a split request stay multiples of the minimum (validate() made the maximum one).
        maximumPayload = max(min(UInt64(terms.blockSizes?.maximum ?? .max), 32 << 20) / minimum * minimum, minimum)
        maximumEffect = max(min(UInt64(terms.blockSizes?.maximum ?? .max), 1 << 30) / minimum * minimum, minimum)
        ready = CompletionQueue(capacity: queueDepth)
        // Twice the depth: timed-out requests keep their handle until the server answers.
        slots = Array(repeating: Slot(), count: 2 * queueDepth)
        freeSlots = (0..<Int32(2 * queueDepth)).reversed()
        parents = Array(repeating: Parent(), count: 2 * queueDepth)
        freeParents = (0..<Int32(2 * queueDepth)).reversed()
        batch.reserveCapacity(queueDepth)
        startDetachedThread(named: "nbd-client") { [self] in readerMain() }
    }

    deinit {
        close()
    }

    // MARK: submit

    /// Accepts a prefix of `operations` (at most `queueDepth - outstanding`) and sends
    /// them (each as one request, or several when longer than the server takes at once);
    /// refusals, flushes the server cannot take and discards it cannot take complete at
    /// once. While the connection is being replaced they wait and go with the re-sent
    /// requests. Throws `.closed` after ``close()``.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "NBD storage \(uri) is closed") }
        let accepted = min(operations.count, queueDepth - outstanding)
        guard accepted > 0 else { return 0 }
        batch.removeAll(keepingCapacity: true)
        let deadline = Self.now() &+ timeoutNanoseconds
        var completedHere = false
        var sendOn: UInt64? = nil
        lock.withLock {
            for i in 0..<accepted {
                let op = operations[i]
                if let outcome = refusal(op) {
                    ready.push(StorageCompletion(tag: op.tag, outcome: outcome))
                    completedHere = true
                } else if let broken {
                    ready.push(StorageCompletion(tag: op.tag, outcome: .failure(broken)))
                    completedHere = true
                } else if !claim(op, deadline: deadline) {
                    completedHere = true
                }
            }
            if connected && !batch.isEmpty { sendOn = epoch }
        }
        outstanding += accepted
        if completedHere { signal.signal() }
        if let sendOn { sendBatch(epoch: sendOn) }
        return accepted
    }

    /// The outcome of an operation that never reaches the server, or nil to send it.
    private func refusal(_ op: StorageOperation) -> StorageCompletion.Outcome? {
        if let r = StorageChecks.refusal(op, byteCount: byteCount, readOnly: isReadOnly, alignment: alignment) {
            return .failure(r)
        }
        switch op.kind {
        case .flush:
            return supportsFlush ? nil : .success(bytes: 0)
        case .discard:
            guard supportsDiscard else {
                return .failure(StorageError(.notSupported, "\(uri) offers neither NBD_CMD_WRITE_ZEROES nor NBD_CMD_TRIM"))
            }
            if op.length == 0 { return .success(bytes: 0) }
            if alignment > 1 && (op.offset % UInt64(alignment) != 0 || op.length % UInt64(alignment) != 0) {
                return .failure(StorageError(.misaligned, "discard of \(op.length) bytes at \(op.offset): \(uri) takes multiples of \(alignment)"))
            }
            return nil
        case .read, .write:
            return nil
        }
    }

    /// Under the lock: a parent for `op` and a slot per part, the parts appended to
    /// `batch`. False when there are no handles left (the operation failed at once).
    private func claim(_ op: StorageOperation, deadline: UInt64) -> Bool {
        let command: NBDCommand
        let total: UInt64
        let piece: UInt64
        switch op.kind {
        case .read: (command, total, piece) = (.read, op.transferLength, maximumPayload)
        case .write: (command, total, piece) = (.write, op.transferLength, maximumPayload)
        case .flush: (command, total, piece) = (.flush, 0, 1)
        case .discard: (command, total, piece) = (discardsZero ? .writeZeroes : .trim, op.length, maximumEffect)
        }
        // refusal() keeps reads, writes and discards inside the device, so `total` is small enough.
        let count = total == 0 ? 1 : Int((total - 1) / piece + 1)
        guard count <= freeSlots.count || slots.count + count - freeSlots.count <= Self.maximumSlots else {
            ready.push(StorageCompletion(tag: op.tag, outcome: .failure(
                StorageError(.io(.resourceBusy), "every NBD handle is held by a request \(uri) has not answered"))))
            return false
        }
        let p = takeParent()
        parents[p] = Parent(tag: op.tag, partsLeft: count, deadline: deadline)
        var start: UInt64 = 0
        for _ in 0..<count {
            let length = min(piece, total - start)
            let s = takeSlot()
            sequence &+= 1
            slots[s].state = .inFlight
            slots[s].parent = Int32(p)
            slots[s].part = Part(handle: UInt64(slots[s].generation) << 32 | UInt64(s), command: command,
                                 offset: op.offset &+ start, length: UInt32(length),
                                 buffers: op.buffers, bufferCount: op.bufferCount, byteStart: Int(start),
                                 sequence: sequence)
            batch.append(slots[s].part)
            start += length
        }
        return true
    }

    private func takeSlot() -> Int {
        if let i = freeSlots.popLast() { return Int(i) }
        slots.append(Slot())
        return slots.count - 1
    }

    private func takeParent() -> Int {
        if let i = freeParents.popLast() { return Int(i) }
        parents.append(Parent())
        return parents.count - 1
    }

    /// Sends `batch` on the connection of `epoch`; nothing when that connection is gone
    /// (the new connection's re-send carries these parts). A send that fails shuts the
    /// socket down; the reader then replaces the connection and re-sends.
    private func sendBatch(epoch wanted: UInt64) {
        sendLock.lock()
        defer { sendLock.unlock() }
        let socket = lock.withLock { connected && epoch == wanted ? fd : -1 }
        guard socket >= 0 else { return }
        let sent = batch.withUnsafeBufferPointer { writer.send($0, on: socket) }
        if !sent { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    /// `sendmsg` calls of the submitting thread, for tests.
    var requestSends: Int { sendLock.withLock { writer.sends } }
    /// The reader's receive calls that brought bytes, as of its last completed reply, for tests.
    var replyReceives: Int { lock.withLock { replyReceiveCount } }
    /// The reader's receive calls that found the socket empty, as of its last completed reply, for tests.
    var replyDryReceives: Int { lock.withLock { replyDryReceiveCount } }

    // MARK: reap

    /// Moves posted completions into `completions`, waiting up to `timeout` for one when none is ready.
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "NBD storage \(uri) is closed") }
        guard completions.count > 0 else { return 0 }
        signal.drain()
        var (n, more) = take(into: completions)
        if n == 0 && timeout > .zero && outstanding > 0 && signal.wait(timeout) {
            signal.drain()
            (n, more) = take(into: completions)
        }
        // The reader signals only an empty queue: what did not fit must wake the next wait.
        if more { signal.signal() }
        outstanding -= n
        return n
    }

    /// Moves posted completions into `completions`; how many, and whether some are left.
    private func take(into completions: UnsafeMutableBufferPointer<StorageCompletion>) -> (Int, Bool) {
        lock.withLock {
            let n = ready.drain(into: completions, from: 0)
            return (n, !ready.isEmpty)
        }
    }

    /// True when a completion is posted and not yet reaped (no system call).
    public var mayHaveCompletions: Bool {
        if closed { return true }
        return lock.withLock { !ready.isEmpty }
    }

    /// Sends `NBD_CMD_DISC`, stops the reader thread (bounded) and closes the socket;
    /// outstanding operations are dropped.
    public func close() {
        guard !closed else { return }
        closed = true
        lock.withLock { stopping = true }
        sendLock.withLock {
            let socket = lock.withLock { connected && broken == nil ? fd : -1 }
            if socket >= 0 {
                let disc = NBDRequest(command: .disconnect, handle: 0, offset: 0, length: 0).encoded()
                _ = NBDConnection.write(socket, disc)
            }
        }
        // The reader retires a socket only after clearing `fd` under the lock.
        lock.withLock { if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) } }
        // The reader polls in short steps and sees `stopping`; a reconnect attempt is bounded by 5 s.
        _ = readerDone.wait(.seconds(60))
        sendLock.withLock {}  // a re-sending thread that holds it has seen the socket shut down
        lock.withLock {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
        signal.close()
        readerDone.close()
    }

    // MARK: the reader thread

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    private func readerMain() {
        var input = StreamInput()
        let vecs = UnsafeMutablePointer<iovec>.allocate(capacity: StorageOperation.maxBuffers)
        defer {
            vecs.deallocate()
            readerDone.signal()
        }
        var socket = lock.withLock { fd }
        // When the connection first broke since the last good reply.
        var troubleSince: UInt64? = nil
        // Reads try the socket before polling it, so a busy server may never let the reader
        // poll: timeouts are looked at every 100 ms here as well.
        var lastExpiry = Self.now()
        while true {
            if let failure = serveReply(socket, &input, vecs: vecs) {
                publish()
                input.reset()
                guard let next = reconnect(after: failure, socket: socket, since: &troubleSince) else { return }
                socket = next
            } else if troubleSince != nil {
                troubleSince = nil
            }
            let now = Self.now()
            if now &- lastExpiry > 100_000_000 {
                lastExpiry = now
                expire(receiving: nil)
            }
        }
    }

    /// A read's data longer than this goes from the socket straight into its buffers, once
    /// what the reader's buffer holds of it is copied.
    static let directThreshold = 16 << 10

    /// Signals the completions posted since the last signal.
    private func publish() {
        guard unpublished else { return }
        unpublished = false
        signal.signal()
    }

    /// Reads one reply and completes its part; the error that broke the connection otherwise.
    private func serveReply(_ socket: Int32, _ input: inout StreamInput, vecs: UnsafeMutablePointer<iovec>) -> StorageError? {
        while input.buffered < NBDSimpleReply.size {
            if let failure = receiveMore(socket, &input, receiving: nil) { return failure }
        }
        let r = input.bytes
        let magic = UInt32(bigEndian: r.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let error = NBDErrno(rawValue: UInt32(bigEndian: r.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let handle = UInt64(bigEndian: r.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        guard magic == NBDMagic.simpleReply else {
            let what = magic == NBDMagic.structuredReply ? "a structured reply, which was never negotiated"
                : "reply magic 0x\(String(magic, radix: 16)), not 0x67446698"
            return StorageError(.io(.protocolError), "\(uri) sent \(what)")
        }
        input.consume(NBDSimpleReply.size)
        let index = Int(handle & 0xffff_ffff)
        let generation = UInt32(truncatingIfNeeded: handle >> 32)
        // A reply with no data is finished under the same lock that finds its slot; a
        // read's data is received first, outside it.
        enum Found { case none, answered(posted: Bool), data(Slot) }
        let receives = (input.receives, input.dryReceives)
        let found: Found = lock.withLock {
            guard index < slots.count, slots[index].state != .free, slots[index].generation == generation else { return .none }
            if slots[index].part.command == .read && error == .ok { return .data(slots[index]) }
            return .answered(posted: complete(index, error, receives: receives))
        }
        let posted: Bool
        switch found {
        case .none:
            return StorageError(.io(.protocolError), "\(uri) answered handle 0x\(String(handle, radix: 16)), which no request has")
        case .answered(let p):
            posted = p
        case .data(let slot):
            if let failure = receiveData(socket, of: slot, index: index, &input, vecs: vecs) { return failure }
            let receives = (input.receives, input.dryReceives)
            posted = lock.withLock { complete(index, error, receives: receives) }
        }
        if posted { unpublished = true }
        return nil
    }

    /// Under the lock: the part in `index` is answered with `error`; true when its
    /// completion went onto an empty queue (the eventfd to be signalled at the next
    /// publish).
    private func complete(_ index: Int, _ error: NBDErrno, receives: (bytes: Int, dry: Int)) -> Bool {
        let failure = error == .ok ? nil
            : StorageError(.io(Self.localErrno(error)), "\(uri) answered \(slots[index].part.command) with \(error)")
        // reap() resets the eventfd before it takes the queue: a completion pushed onto a
        // non-empty queue is taken with the ones before it, whose push signalled (or will,
        // at the next publish).
        let wasEmpty = ready.isEmpty
        (replyReceiveCount, replyDryReceiveCount) = receives
        return finish(index, failure: failure) && wasEmpty
    }

    /// Receives more into `input`: what the socket holds, else after a poll in steps of at
    /// most 100 ms, so timeouts and `close` are seen. The completions of the replies
    /// taken so far are signalled first. After a receive that read the socket dry it polls
    /// first: a `recv` would only fail with `EAGAIN`.
    private func receiveMore(_ socket: Int32, _ input: inout StreamInput, receiving: Int?) -> StorageError? {
        publish()
        if input.readDry, let failure = waitReadable(socket, receiving: receiving) { return failure }
        while true {
            switch input.receive(socket) {
            case .bytes: return nil
            case .nothingYet:
                if let failure = waitReadable(socket, receiving: receiving) { return failure }
            case .endOfStream: return StorageError(.io(.connectionReset), "\(uri) closed the connection")
            case .failed(let e): return StorageError(.io(Errno(rawValue: e)), "reading from \(uri)")
            }
        }
    }

    /// A read's data: into its buffers while it is in flight (what is buffered copied,
    /// a long rest read straight into them), dropped once it timed out.
    private func receiveData(_ socket: Int32, of slot: Slot, index: Int, _ input: inout StreamInput,
                             vecs: UnsafeMutablePointer<iovec>) -> StorageError? {
        var left = Int(slot.part.length)
        guard slot.state == .inFlight, slot.part.buffers != nil else {
            while left > 0 {
                if input.buffered == 0, let failure = receiveMore(socket, &input, receiving: index) { return failure }
                let n = min(left, input.buffered)
                input.consume(n)
                left -= n
            }
            return nil
        }
        // Our own iovecs over the part: reading advances them; the caller's stay as given.
        let count = slot.part.dataVectors(into: vecs)
        var first = 0
        while true {
            left -= input.scatter(into: vecs, count, first: &first, limit: left)
            if left == 0 { return nil }
            // claim() made the part's length out of its buffers; were they shorter, fail, not spin.
            guard first < count else { return StorageError(.io(.invalidArgument), "a read's buffers are shorter than its request to \(uri)") }
            if left <= Self.directThreshold {
                if let failure = receiveMore(socket, &input, receiving: index) { return failure }
                continue
            }
            publish()
            let (n, outcome) = input.receiveDirect(socket, into: vecs, count, first: &first)
            left -= n
            switch outcome {
            case .bytes:
                if left > 0, input.readDry, let failure = waitReadable(socket, receiving: index) { return failure }
            case .nothingYet:
                if let failure = waitReadable(socket, receiving: index) { return failure }
            case .endOfStream: return StorageError(.io(.connectionReset), "\(uri) closed the connection in a read's data")
            case .failed(let e): return StorageError(.io(Errno(rawValue: e)), "reading from \(uri)")
            }
        }
    }

    /// Under the lock: the part in `index` is answered (or will never be); its slot is
    /// free again and its operation completes when it was the last part. True when a
    /// completion was posted.
    private func finish(_ index: Int, failure: StorageError?) -> Bool {
        let p = Int(slots[index].parent)
        let answered = slots[index].state == .inFlight
        let length = Int(slots[index].part.length)
        let command = slots[index].part.command
        release(index)
        if answered && !parents[p].done {
            if let failure {
                if parents[p].failure == nil { parents[p].failure = failure }
            } else if command == .read || command == .write {
                parents[p].bytes += length
            }
        }
        parents[p].partsLeft -= 1
        guard parents[p].partsLeft == 0 else { return false }
        freeParents.append(Int32(p))
        guard !parents[p].done else { return false }
        parents[p].done = true
        let outcome: StorageCompletion.Outcome = parents[p].failure.map { .failure($0) } ?? .success(bytes: parents[p].bytes)
        parents[p].failure = nil
        ready.push(StorageCompletion(tag: parents[p].tag, outcome: outcome))
        return true
    }

    /// Under the lock: the slot is free again, under a new generation so a late reply to
    /// its old handle is an unknown handle.
    private func release(_ index: Int) {
        slots[index].state = .free
        slots[index].generation &+= 1
        slots[index].part.buffers = nil
        freeSlots.append(Int32(index))
    }

    /// Under the lock: fails the operation of parent `p` now with `error`; its parts in
    /// flight are abandoned (a late answer is read and dropped). True when a completion was posted.
    private func failEarly(parent p: Int, _ error: StorageError) -> Bool {
        guard !parents[p].done else { return false }
        parents[p].done = true
        parents[p].failure = nil
        ready.push(StorageCompletion(tag: parents[p].tag, outcome: .failure(error)))
        for i in slots.indices where slots[i].state == .inFlight && Int(slots[i].parent) == p {
            slots[i].state = .abandoned
        }
        return true
    }

    /// The connection broke with `failure`: connects again (backoff, each attempt bounded)
    /// until `reconnectWindow` has passed since the trouble began, checks the export is
    /// the same, and starts re-sending what had no reply. The new socket, or nil when the
    /// engine stops or gives up (every outstanding operation then failed).
    private func reconnect(after failure: StorageError, socket: Int32, since: inout UInt64?) -> Int32? {
        let stop = lock.withLock { () -> Bool in
            connected = false
            epoch &+= 1
            fd = -1
            // The server that held these handles is gone; nobody will answer them.
            for i in slots.indices where slots[i].state == .abandoned { _ = finish(i, failure: nil) }
            return stopping
        }
        shutdown(socket, Int32(SHUT_RDWR))
        sendLock.withLock {}  // a send in progress on the old socket fails and ends
        Glibc.close(socket)
        if stop { return nil }
        let start = since ?? Self.now()
        since = start
        let window = UInt64(reconnectWindow.clampedNanoseconds)
        var lastError = failure
        var backoff: UInt64 = 50_000_000
        var attempt = 0
        while true {
            expire(receiving: nil)
            if lock.withLock({ stopping }) { return nil }
            let now = Self.now()
            let elapsed = now &- start
            if elapsed >= window {
                let why = attempt == 0 ? "\(failure)" : "\(failure); the last attempt: \(lastError)"
                giveUp(StorageError(.io(.ioError), "\(uri): no connection within \(reconnectWindow) of losing it (\(why))"))
                return nil
            }
            if attempt > 0 {
                if !pause(min(backoff, window - elapsed)) { return nil }
                backoff = min(backoff * 2, 1_000_000_000)
            }
            attempt += 1
            let left = window &- min(window, Self.now() &- start)
            let bound = Duration.nanoseconds(Int64(clamping: max(min(left, 5_000_000_000,
                                                                      UInt64(connectTimeout.clampedNanoseconds)), 100_000_000)))
            let next: Int32
            let offered: NBDExportTerms
            do throws(StorageError) {
                next = try NBDConnection.connect(uri, timeout: bound)
                do throws(StorageError) {
                    offered = try NBDConnection.handshake(next, export: uri.exportName, uri: uri)
                } catch {
                    Glibc.close(next)
                    throw error
                }
            } catch {
                lastError = error
                continue
            }
            if let change = difference(offered) {
                Glibc.close(next)
                giveUp(StorageError(.io(.ioError), "\(uri) came back as a different export (\(change)); refusing to continue"))
                return nil
            }
            NBDConnection.setTimeouts(next, requestTimeout)
            let (proceed, current) = lock.withLock { () -> (Bool, UInt64) in
                guard !stopping else { return (false, epoch) }
                fd = next
                reconnectCount += 1
                return (true, epoch)
            }
            guard proceed else {
                Glibc.close(next)
                return nil
            }
            // Another thread re-sends, so a server answering a large re-sent read while a
            // large write is still going out cannot stall both ends.
            startDetachedThread(named: "nbd-resend") { [self] in resend(epoch: current, on: next) }
            return next
        }
    }

    /// Waits `nanoseconds` in steps of 100 ms; false when the engine stops meanwhile.
    private func pause(_ nanoseconds: UInt64) -> Bool {
        let end = Self.now() &+ nanoseconds
        while true {
            if lock.withLock({ stopping }) { return false }
            let now = Self.now()
            if now >= end { return true }
            let step = min(end - now, 100_000_000)
            var ts = timespec(tv_sec: 0, tv_nsec: Int(step))
            nanosleep(&ts, nil)
        }
    }

    /// What makes `offered` another export than the one this engine serves, or nil.
    private func difference(_ offered: NBDExportTerms) -> String? {
        if offered.size != byteCount { return "its size is \(offered.size) bytes, not \(byteCount)" }
        if !isReadOnly && offered.flags.contains(.readOnly) { return "it is read-only now" }
        let used: [(NBDTransmissionFlags, String)] = [(.sendFlush, "NBD_FLAG_SEND_FLUSH"), (.sendTrim, "NBD_FLAG_SEND_TRIM"),
                                                      (.sendWriteZeroes, "NBD_FLAG_SEND_WRITE_ZEROES"), (.sendFUA, "NBD_FLAG_SEND_FUA")]
        for (flag, name) in used where terms.flags.contains(flag) && !offered.flags.contains(flag) {
            return "it no longer offers \(name)"
        }
        if let b = offered.blockSizes {
            if UInt64(b.minimum) > UInt64(alignment) || UInt64(b.minimum) > 1 && UInt64(alignment) % UInt64(b.minimum) != 0 {
                return "its minimum block size is \(b.minimum), not \(alignment)"
            }
            if UInt64(b.maximum) < maximumPayload || UInt64(b.maximum) < maximumEffect && terms.canDiscard {
                return "its maximum block size is \(b.maximum), below the \(maximumPayload) this engine sends"
            }
        }
        return nil
    }

    /// On a thread of its own: re-sends, in submission order, every part still waiting
    /// for a reply, on the connection of `wanted` (nothing when that one is gone too).
    /// Holding `sendLock` meanwhile keeps new requests behind the re-sent ones.
    private func resend(epoch wanted: UInt64, on socket: Int32) {
        sendLock.lock()
        defer { sendLock.unlock() }
        var parts: [Part] = []
        var posted = false
        let proceed = lock.withLock { () -> Bool in
            guard epoch == wanted, !stopping, broken == nil else { return false }
            for i in slots.indices {
                switch slots[i].state {
                case .inFlight: parts.append(slots[i].part)
                // Timed out while there was no connection: never sent on this one.
                case .abandoned: posted = finish(i, failure: nil) || posted
                case .free: break
                }
            }
            parts.sort { $0.sequence < $1.sequence }
            resendCount += parts.count
            connected = true
            return true
        }
        if posted { signal.signal() }
        guard proceed else { return }
        if !parts.withUnsafeBufferPointer({ writer.send($0, on: socket) }) { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    /// Every outstanding operation fails with `error`, and so does every later one.
    private func giveUp(_ error: StorageError) {
        lock.withLock {
            broken = error
            connected = false
            for i in slots.indices where slots[i].state != .free {
                let p = Int(slots[i].parent)
                if !parents[p].done { _ = failEarly(parent: p, error) }
                _ = finish(i, failure: nil)
            }
        }
        signal.signal()
    }

    private static func localErrno(_ e: NBDErrno) -> Errno {
        switch e {
        case .permission: .notPermitted
        case .noMemory: .noMemory
        case .invalid: .invalidArgument
        case .noSpace: .noSpace
        case .overflow: .overflow
        case .shutdown: Errno(rawValue: ESHUTDOWN)
        default: .ioError
        }
    }

    /// Waits until the socket is readable, failing timed-out requests on the way; an
    /// error when the engine stops, or when the request whose data is arriving times out
    /// mid-reply (the stream cannot be resynchronised: the connection is replaced).
    private func waitReadable(_ socket: Int32, receiving: Int?) -> StorageError? {
        while true {
            var pfd = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, 100)
            if rc <= 0, lock.withLock({ stopping }) {
                return StorageError(.closed, "NBD storage \(uri) is closed")
            }
            if rc > 0 { return nil }
            if expire(receiving: receiving) {
                return StorageError(.io(.timedOut), "\(uri) stalled in the middle of a reply")
            }
        }
    }

    /// Fails every operation with a part past its deadline (except the one whose reply is
    /// being received); true when that one is past its deadline too.
    @discardableResult
    private func expire(receiving: Int?) -> Bool {
        let now = Self.now()
        var posted = false
        var receivingExpired = false
        lock.withLock {
            let busy = receiving.map { Int(slots[$0].parent) }
            for i in slots.indices where slots[i].state == .inFlight {
                let p = Int(slots[i].parent)
                guard parents[p].deadline < now else { continue }
                if p == busy {
                    receivingExpired = true
                    continue
                }
                let error = StorageError(.io(.timedOut), "\(uri) did not answer \(slots[i].part.command) within \(requestTimeout)")
                posted = failEarly(parent: p, error) || posted
            }
        }
        if posted { signal.signal() }
        return receivingExpired
    }
}

extension NBDStorage {
    /// Connects to `uri` once on a thread of its own (never a task's), reads what the
    /// export offers, and disconnects: what a backend needs to advertise the disk before
    /// each queue opens its own engine.
    public static func probe(_ uri: NBDURI, connectTimeout: Duration = .seconds(30)) async throws(StorageError) -> NBDExportTerms {
        let result: Result<NBDExportTerms, StorageError> = await withCheckedContinuation { c in
            startDetachedThread(named: "nbd-probe") {
                do throws(StorageError) {
                    let s = try NBDStorage(uri: uri, queueDepth: 1, connectTimeout: connectTimeout)
                    let terms = s.terms
                    s.close()
                    c.resume(returning: .success(terms))
                } catch {
                    c.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }
}
