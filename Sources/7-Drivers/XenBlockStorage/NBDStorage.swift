import CXen
import Foundation
import Glibc
import NBDProtocol
import SystemPackage
import XenLocks

/// A storage engine on a remote NBD export: one connection, many requests in flight.
///
/// - The connection opens with the fixed-newstyle handshake and `NBD_OPT_GO`
///   (``NBDExportTerms``): the export's size, its transmission flags, its block size
///   constraints (the minimum becomes ``alignment``; a read or write above the maximum
///   payload fails with ``StorageError/Code-swift.enum/outOfRange``).
/// - `submit` sends each request (a write with its data, straight from the iovecs) on
///   the caller's thread; a dedicated reader thread matches simple replies by handle,
///   reads a read's data straight into its iovecs, and posts the completion, signalling
///   ``completionDescriptor`` (an eventfd).
/// - Flush is `NBD_CMD_FLUSH` when the server offers it (else it succeeds at once: the
///   server has said it has no cache to flush). Discard is `NBD_CMD_TRIM` when offered,
///   else it fails with ``StorageError/Code-swift.enum/notSupported`` (``supportsDiscard``
///   is false: a backend should not advertise discard). An export the server marks
///   read-only is read-only here.
/// - The server is a peer: a reply with a bad magic, an unknown handle or a structured
///   reply (never negotiated) is a protocol error that fails every outstanding operation
///   and ends the connection; nothing traps. A request unanswered after ``requestTimeout``
///   fails alone (`ETIMEDOUT`); its handle stays reserved until the server answers, and
///   a late read's data is read and dropped. After the connection ends every new
///   operation fails with the error that ended it.
public final class NBDStorage: StorageEngine, @unchecked Sendable {
    // @unchecked: `slots`, `ready`, `broken` and `stopping` are touched only under
    // `lock`; the rest is set in init, or confined to the submitting thread (StorageEngine's rule).

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
    /// What the handshake settled.
    public let terms: NBDExportTerms
    /// How long a request may go unanswered before it fails alone.
    public let requestTimeout: Duration
    /// Whether the server offered `NBD_CMD_TRIM`: discards reach it, else they fail.
    public var supportsDiscard: Bool { terms.flags.contains(.sendTrim) }
    /// Whether the server offered `NBD_CMD_FLUSH`.
    public var supportsFlush: Bool { terms.flags.contains(.sendFlush) }
    /// The largest read or write sent as one request: the server's maximum block size,
    /// at most 32 MiB (proto.md's size every server must accept is smaller; most take this).
    public let maximumPayload: UInt64
    /// The eventfd the reader thread signals for every completion it posts.
    public var completionDescriptor: FileDescriptor { signal.descriptor }

    private let fd: Int32
    private let signal: CompletionSignal
    private let lock = Lock()
    private var ready: CompletionQueue
    private var slots: [Slot]
    private var freeSlots: [Int32]
    private var broken: StorageError?
    private var stopping = false
    private var closed = false
    private let readerDone: CompletionSignal
    private let header = UnsafeMutableRawPointer.allocate(byteCount: NBDRequest.size, alignment: 8)
    private let vectors: UnsafeMutablePointer<iovec>

    private struct Slot {
        enum State { case free, inFlight, abandoned }
        var state = State.free
        var generation: UInt32 = 0
        var tag: UInt64 = 0
        var command = NBDCommand.read
        var buffers: UnsafeMutablePointer<iovec>? = nil
        var bufferCount = 0
        var length = 0
        var deadline: UInt64 = 0
    }

    /// Connects to `uri`, negotiates the export, and starts the reader thread.
    /// - Throws: ``StorageError/Code-swift.enum/closed`` when the server is unreachable, refuses
    ///   the export or breaks the handshake (the message says which).
    public init(uri: NBDURI, readOnly: Bool = false, queueDepth: Int = 64,
                requestTimeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(30)) throws(StorageError) {
        precondition(queueDepth >= 1 && queueDepth <= 65536, "queue depth 1...65536")
        self.uri = uri
        self.queueDepth = queueDepth
        self.requestTimeout = requestTimeout
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
        alignment = Int(terms.blockSizes?.minimum ?? 1)
        maximumPayload = min(UInt64(terms.blockSizes?.maximum ?? .max), 32 << 20)
        ready = CompletionQueue(capacity: queueDepth)
        // Twice the depth: timed-out requests keep their handle until the server answers.
        slots = Array(repeating: Slot(), count: 2 * queueDepth)
        freeSlots = (0..<Int32(2 * queueDepth)).reversed()
        vectors = .allocate(capacity: StorageOperation.maxBuffers + 1)
        let reader = Thread { [self] in readerMain() }
        reader.name = "nbd-client"
        reader.start()
    }

    deinit {
        close()
        header.deallocate()
        vectors.deallocate()
    }

    // MARK: submit

    /// Accepts a prefix of `operations` (at most `queueDepth - outstanding`) and sends
    /// each as one request; refusals, flushes the server cannot take and discards it
    /// cannot take complete at once. Throws `.closed` after ``close()``.
    public func submit(_ operations: UnsafeBufferPointer<StorageOperation>) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "NBD storage \(uri) is closed") }
        let accepted = min(operations.count, queueDepth - outstanding)
        var completedHere = false
        for i in 0..<accepted {
            let op = operations[i]
            if let failure = refusal(op) {
                post(StorageCompletion(tag: op.tag, outcome: failure))
                completedHere = true
                continue
            }
            let command: NBDCommand
            let length: UInt64
            switch op.kind {
            case .read: (command, length) = (.read, op.transferLength)
            case .write: (command, length) = (.write, op.transferLength)
            case .flush: (command, length) = (.flush, 0)
            case .discard: (command, length) = (.trim, op.length)
            }
            // refusal() bounds every length by maximumPayload or UInt32.max.
            guard let slot = claim(op, command: command, length: Int(length)) else {
                completedHere = true
                continue
            }
            send(slot, command: command, offset: op.offset, length: UInt32(length), op: op,
                 more: i + 1 < accepted)
        }
        outstanding += accepted
        if completedHere { signal.signal() }
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
            guard supportsDiscard else { return .failure(StorageError(.notSupported, "\(uri) does not offer NBD_CMD_TRIM")) }
            if op.length == 0 { return .success(bytes: 0) }
            if op.length > UInt64(UInt32.max) {
                return .failure(StorageError(.outOfRange, "discard of \(op.length) bytes: one NBD request carries at most 4 GiB - 1"))
            }
            return nil
        case .read, .write:
            if op.transferLength > maximumPayload {
                return .failure(StorageError(.outOfRange, "\(op.kind) of \(op.transferLength) bytes; \(uri) takes at most \(maximumPayload) in one request"))
            }
            return nil
        }
    }

    private func post(_ completion: StorageCompletion) {
        lock.withLock { ready.push(completion) }
    }

    /// A slot for `op`, or nil when the operation failed at once (connection gone, every handle held).
    private func claim(_ op: StorageOperation, command: NBDCommand, length: Int) -> Int? {
        let deadline = Self.now() &+ UInt64(requestTimeout.clampedNanoseconds)
        return lock.withLock { () -> Int? in
            if let broken {
                ready.push(StorageCompletion(tag: op.tag, outcome: .failure(broken)))
                return nil
            }
            guard let index = freeSlots.popLast() else {
                ready.push(StorageCompletion(tag: op.tag, outcome: .failure(
                    StorageError(.io(.resourceBusy), "every NBD handle is held by a request \(uri) has not answered"))))
                return nil
            }
            let i = Int(index)
            slots[i].state = .inFlight
            slots[i].tag = op.tag
            slots[i].command = command
            slots[i].buffers = op.buffers
            slots[i].bufferCount = op.bufferCount
            slots[i].length = length
            slots[i].deadline = deadline
            return i
        }
    }

    /// Sends the request header (and a write's data). A send that fails shuts the socket
    /// down; the reader thread then fails every outstanding request, this one included.
    private func send(_ index: Int, command: NBDCommand, offset: UInt64, length: UInt32, op: StorageOperation, more: Bool) {
        let generation = lock.withLock { slots[index].generation }
        let handle = UInt64(generation) << 32 | UInt64(index)
        let h = UnsafeMutableRawBufferPointer(start: header, count: NBDRequest.size)
        h.storeBytes(of: NBDMagic.request.bigEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: UInt16(0).bigEndian, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: command.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: handle.bigEndian, toByteOffset: 8, as: UInt64.self)
        h.storeBytes(of: offset.bigEndian, toByteOffset: 16, as: UInt64.self)
        h.storeBytes(of: length.bigEndian, toByteOffset: 24, as: UInt32.self)
        vectors[0] = iovec(iov_base: header, iov_len: NBDRequest.size)
        var count = 1
        if command == .write, let buffers = op.buffers {
            for i in 0..<op.bufferCount where buffers[i].iov_len > 0 {
                vectors[count] = buffers[i]
                count += 1
            }
        }
        if !Self.sendAll(fd, vectors, count, flags: Int32(MSG_NOSIGNAL) | (more ? Int32(MSG_MORE) : 0)) {
            let e = errno
            lock.withLock {
                if broken == nil { broken = StorageError(.io(Errno(rawValue: e)), "sending to \(uri)") }
            }
            shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    /// `sendmsg` until every byte of the `count` vectors is out, advancing them in place.
    static func sendAll(_ fd: Int32, _ vectors: UnsafeMutablePointer<iovec>, _ count: Int, flags: Int32) -> Bool {
        var first = 0
        while first < count {
            var msg = msghdr()
            msg.msg_iov = vectors + first
            msg.msg_iovlen = count - first
            let n = sendmsg(fd, &msg, flags)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            var left = n
            while first < count && left >= vectors[first].iov_len {
                left -= vectors[first].iov_len
                first += 1
            }
            if left > 0 {
                vectors[first].iov_base += left
                vectors[first].iov_len -= left
            }
        }
        return true
    }

    // MARK: reap

    /// Moves posted completions into `completions`, waiting up to `timeout` for one when none is ready.
    public func reap(into completions: UnsafeMutableBufferPointer<StorageCompletion>, timeout: Duration) throws(StorageError) -> Int {
        guard !closed else { throw StorageError(.closed, "NBD storage \(uri) is closed") }
        guard completions.count > 0 else { return 0 }
        signal.drain()
        var n = lock.withLock { ready.drain(into: completions, from: 0) }
        if n == 0 && timeout > .zero && outstanding > 0 && signal.wait(timeout) {
            signal.drain()
            n = lock.withLock { ready.drain(into: completions, from: 0) }
        }
        outstanding -= n
        return n
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
        let alreadyBroken = lock.withLock { () -> Bool in
            stopping = true
            return broken != nil
        }
        if !alreadyBroken {
            let disc = NBDRequest(command: .disconnect, handle: 0, offset: 0, length: 0).encoded()
            _ = NBDConnection.write(fd, disc)
        }
        shutdown(fd, Int32(SHUT_RDWR))
        // The reader polls in short steps and sees `stopping`; bounded all the same.
        _ = readerDone.wait(.seconds(10))
        Glibc.close(fd)
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
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 64 << 10, alignment: 16)
        let reply = UnsafeMutableRawPointer.allocate(byteCount: NBDSimpleReply.size, alignment: 8)
        let vecs = UnsafeMutablePointer<iovec>.allocate(capacity: StorageOperation.maxBuffers)
        defer {
            scratch.deallocate()
            reply.deallocate()
            vecs.deallocate()
            readerDone.signal()
        }
        while true {
            if let failure = receive(reply, NBDSimpleReply.size, receiving: nil) {
                fail(failure)
                return
            }
            let r = UnsafeRawBufferPointer(start: reply, count: NBDSimpleReply.size)
            let magic = UInt32(bigEndian: r.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            let error = NBDErrno(rawValue: UInt32(bigEndian: r.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            let handle = UInt64(bigEndian: r.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            guard magic == NBDMagic.simpleReply else {
                let what = magic == NBDMagic.structuredReply ? "a structured reply, which was never negotiated"
                    : "reply magic 0x\(String(magic, radix: 16)), not 0x67446698"
                fail(StorageError(.io(.protocolError), "\(uri) sent \(what)"))
                return
            }
            let index = Int(handle & 0xffff_ffff)
            let generation = UInt32(truncatingIfNeeded: handle >> 32)
            let slot: Slot? = lock.withLock {
                guard index < slots.count, slots[index].state != .free, slots[index].generation == generation else { return nil }
                return slots[index]
            }
            guard let slot else {
                fail(StorageError(.io(.protocolError), "\(uri) answered handle 0x\(String(handle, radix: 16)), which no request has"))
                return
            }
            if slot.command == .read && error == .ok {
                if let failure = receiveData(of: slot, index: index, scratch: scratch, vecs: vecs) {
                    fail(failure)
                    return
                }
            }
            lock.withLock {
                if slots[index].state == .inFlight {
                    let outcome: StorageCompletion.Outcome = error == .ok
                        ? .success(bytes: slot.command == .read || slot.command == .write ? slot.length : 0)
                        : .failure(StorageError(.io(Self.localErrno(error)), "\(uri) answered \(slot.command) with \(error)"))
                    ready.push(StorageCompletion(tag: slot.tag, outcome: outcome))
                }
                release(index)
            }
            signal.signal()
        }
    }

    /// Under the lock: the slot is free again, under a new generation so a late reply to
    /// its old handle is an unknown handle.
    private func release(_ index: Int) {
        slots[index].state = .free
        slots[index].generation &+= 1
        slots[index].buffers = nil
        freeSlots.append(Int32(index))
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

    /// A read's data: into its buffers while it is in flight, into `scratch` once it timed out.
    private func receiveData(of slot: Slot, index: Int, scratch: UnsafeMutableRawPointer,
                             vecs: UnsafeMutablePointer<iovec>) -> StorageError? {
        if slot.state == .inFlight, let buffers = slot.buffers {
            // Our own copy of the iovecs: the read advances it; the caller's stays as given.
            for i in 0..<slot.bufferCount { vecs[i] = buffers[i] }
            var first = 0
            while first < slot.bufferCount {
                if vecs[first].iov_len == 0 {
                    first += 1
                    continue
                }
                if let failure = waitReadable(receiving: index) { return failure }
                let n = readv(fd, vecs + first, Int32(min(slot.bufferCount - first, StorageOperation.maxBuffers)))
                if n == 0 { return StorageError(.io(.connectionReset), "\(uri) closed the connection in a read's data") }
                if n < 0 {
                    if Glibc.errno == EINTR || Glibc.errno == EAGAIN { continue }
                    return StorageError(.io(Errno(rawValue: Glibc.errno)), "reading from \(uri)")
                }
                var left = n
                while first < slot.bufferCount && left >= vecs[first].iov_len {
                    left -= vecs[first].iov_len
                    first += 1
                }
                if left > 0 {
                    vecs[first].iov_base += left
                    vecs[first].iov_len -= left
                }
            }
            return nil
        }
        var left = slot.length
        while left > 0 {
            let step = min(left, 64 << 10)
            if let failure = receive(scratch, step, receiving: index) { return failure }
            left -= step
        }
        return nil
    }

    /// Reads exactly `count` bytes, in steps of at most 100 ms so timeouts and `close` are seen.
    private func receive(_ buffer: UnsafeMutableRawPointer, _ count: Int, receiving: Int?) -> StorageError? {
        var done = 0
        while done < count {
            if let failure = waitReadable(receiving: receiving) { return failure }
            let n = Glibc.read(fd, buffer + done, count - done)
            if n > 0 {
                done += n
            } else if n == 0 {
                return StorageError(.io(.connectionReset), "\(uri) closed the connection")
            } else if Glibc.errno != EINTR && Glibc.errno != EAGAIN {
                return StorageError(.io(Errno(rawValue: Glibc.errno)), "reading from \(uri)")
            }
        }
        return nil
    }

    /// Waits until the socket is readable, failing timed-out requests on the way; an
    /// error when the engine stops, or when the request whose data is arriving times out
    /// mid-reply (the stream cannot be resynchronised).
    private func waitReadable(receiving: Int?) -> StorageError? {
        while true {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, 100)
            let stop = lock.withLock { stopping || broken != nil }
            if stop && rc <= 0 {
                return lock.withLock { broken } ?? StorageError(.closed, "NBD storage \(uri) is closed")
            }
            if rc > 0 { return nil }
            if expire(receiving: receiving) {
                return StorageError(.io(.timedOut), "\(uri) stalled in the middle of a reply")
            }
        }
    }

    /// Fails every in-flight request past its deadline (except the one being received);
    /// true when that one is past its deadline too.
    private func expire(receiving: Int?) -> Bool {
        let now = Self.now()
        var expired = false
        var receivingExpired = false
        lock.withLock {
            for i in slots.indices where slots[i].state == .inFlight && slots[i].deadline < now {
                if i == receiving {
                    receivingExpired = true
                    continue
                }
                slots[i].state = .abandoned
                ready.push(StorageCompletion(tag: slots[i].tag, outcome: .failure(
                    StorageError(.io(.timedOut), "\(uri) did not answer \(slots[i].command) within \(requestTimeout)"))))
                expired = true
            }
        }
        if expired { signal.signal() }
        return receivingExpired
    }

    /// Ends the connection: every in-flight request fails with `error` (or the error
    /// that broke the connection first), every handle is forgotten, new requests fail.
    private func fail(_ error: StorageError) {
        lock.withLock {
            let cause = broken ?? error
            broken = cause
            for i in slots.indices where slots[i].state != .free {
                if slots[i].state == .inFlight {
                    ready.push(StorageCompletion(tag: slots[i].tag, outcome: .failure(cause)))
                }
                release(i)
            }
        }
        shutdown(fd, Int32(SHUT_RDWR))
        signal.signal()
    }
}

extension NBDStorage {
    /// Connects to `uri` once on a thread of its own (never a task's), reads what the
    /// export offers, and disconnects: what a backend needs to advertise the disk before
    /// each queue opens its own engine.
    public static func probe(_ uri: NBDURI, connectTimeout: Duration = .seconds(30)) async throws(StorageError) -> NBDExportTerms {
        let result: Result<NBDExportTerms, StorageError> = await withCheckedContinuation { c in
            let t = Thread {
                do throws(StorageError) {
                    let s = try NBDStorage(uri: uri, queueDepth: 1, connectTimeout: connectTimeout)
                    let terms = s.terms
                    s.close()
                    c.resume(returning: .success(terms))
                } catch {
                    c.resume(returning: .failure(error))
                }
            }
            t.start()
        }
        return try result.get()
    }
}
