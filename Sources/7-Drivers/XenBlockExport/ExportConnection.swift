import DequeModule
import Foundation
import Glibc
import Logging
import NBDProtocol
import XenBlockFront
import XenLocks

/// Zeros for `NBD_CMD_WRITE_ZEROES` on a disk whose discard does not zero: one read-only
/// megabyte for every connection.
private let zeros = OwnedBuffer.zeros(1 << 20)

/// One client: a reader thread that runs the handshake; then the device's own thread
/// (blkfront's queue thread, see ``BlockExportDevice/serveInput(_:descriptor:)``), or
/// the reader where the device has none, takes each request off the socket without
/// waiting, checks it and starts it on the device; replies go out in the order requests
/// complete, from the thread that completed them or a writer thread when the socket is
/// full. Only the connection's own threads block in socket calls.
final class ExportConnection: BlockFrontInput, @unchecked Sendable {
    // @unchecked: the fields below `condition` are guarded by it, those below `inputLock`
    // by that; the rest are immutable.
    let fd: Int32
    private let device: any BlockExportDevice
    private let name: String
    private let limits: BlockExportLimits
    private let logger: Logger
    private let onClose: @Sendable (ExportConnection) -> Void
    /// Told after each send of replies how many it put on the socket whole.
    private let onSent: @Sendable (Int) -> Void
    /// Told after each look at the input how many requests it took, and whether the
    /// device's thread took them.
    private let onTaken: @Sendable (Int, Bool) -> Void
    /// Request data buffers, reused.
    private let buffers = ExportBuffers()

    private struct Reply {
        var header: NBDSimpleReply
        var data: OwnedBuffer?
        var cost: Int
        /// Bytes of header and data already on the socket (a task began sending it).
        var sent = 0
        /// Bytes of header and data.
        var size: Int { NBDSimpleReply.size + (data?.bytes.count ?? 0) }
    }

    private let condition = NSCondition()
    private var replies = Deque<Reply>()
    private var inFlightRequests = 0
    private var inFlightBytes = 0
    private var readerDone = false
    private var writerDone = false
    private var broken = false
    /// A thread is putting a reply on the socket: replies go out whole, one at a time.
    private var sending = false
    /// The device's thread takes the input (else the reader does).
    private var deviceTakesInput = false
    /// The device's thread found the input's end: the reader may finish.
    private var inputOver = false
    /// The input goes back to the reader (the device closed, or the connection is hung
    /// up while the device may have no thread to see it).
    private var inputTakenBack = false
    /// The input stopped at a request that did not fit the connection's bounds; the next
    /// finished request lets it go on.
    private var inputWaitsForRoom = false
    /// The reader waits for room, the writer for a reply: a finished reply signals only a
    /// thread that waits for it (a needless wake-up costs a cross-CPU interrupt, at queue
    /// depth 1 as much as the rest of the request's work in this process).
    private var readerWaits = false
    private var writerWaits = false
    /// A task on the device's executor will send the replies queued by then in one
    /// `sendmsg` (``flush()``); replies that finish meanwhile join them.
    private var flushScheduled = false
    /// At most this many replies go out in one `sendmsg` (two iovecs each, `UIO_MAXIOV` 1024).
    private static let batchLimit = 64
    /// Where ``flush()`` gathers a batch: only the thread that is ``sending`` touches it.
    private let batch = UnsafeMutableBufferPointer<Reply>.allocate(capacity: batchLimit)

    /// Held by whichever thread takes the input, for as long as it does.
    private let inputLock = NSLock()
    private var input: ExportInput
    /// Where the input stands between two calls: a request's data still to come.
    private var partial = PartialInput.none
    /// The terms agreed in the handshake (set before transmission begins).
    private var terms: ExportTerms?
    /// A request header's bytes, decoded from here (one array for the connection's life).
    private var header = [UInt8](repeating: 0, count: NBDRequest.size)

    private enum PartialInput {
        case none
        /// A write's data: `done` of its bytes are in `work`'s payload.
        case payload(ExportRequest, done: Int)
        /// A refused write's data, read and forgotten: `left` bytes to go.
        case swallow(left: Int)
    }

    init(fd: Int32, device: any BlockExportDevice, name: String, limits: BlockExportLimits, logger: Logger,
         onSent: @escaping @Sendable (Int) -> Void = { _ in }, onTaken: @escaping @Sendable (Int, Bool) -> Void = { _, _ in },
         onClose: @escaping @Sendable (ExportConnection) -> Void) {
        self.fd = fd
        self.device = device
        self.name = name
        self.limits = limits
        self.logger = logger
        self.onClose = onClose
        self.onSent = onSent
        self.onTaken = onTaken
        input = ExportInput(fd: fd)
    }

    deinit { batch.deallocate() }

    /// Starts the reader thread (which starts the writer once transmission begins).
    func start() {
        startDetachedThread(named: "nbd-reader") { [self] in readerMain() }
    }

    /// Hard disconnect: every thread sees the socket end; the reader takes the input back
    /// (the device may have no thread running to see it end).
    func hangUp() {
        shutdown(fd, Int32(SHUT_RDWR))
        condition.lock()
        inputTakenBack = true
        condition.broadcast()
        condition.unlock()
    }

    // MARK: Reader

    private func readerMain() {
        ExportSocket.setTimeout(fd, seconds: limits.handshakeSeconds)
        let agreed = handshake()
        // In transmission a client may be idle as long as it likes, as with any NBD server.
        ExportSocket.setTimeout(fd, seconds: 0)
        if let terms = agreed {
            startDetachedThread(named: "nbd-writer") { [self] in writerMain() }
            serve(terms)
            condition.lock()
            readerDone = true
            condition.broadcast()
            while !writerDone { condition.wait() }
            condition.unlock()
        }
        close(fd)
        onClose(self)
    }

    /// The fixed-newstyle handshake; the export's terms once the client is in transmission,
    /// nil if it left or broke the protocol.
    private func handshake() -> ExportTerms? {
        let offered: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]
        guard ExportSocket.write(fd, NBDServerGreeting(flags: offered).encoded()),
              let raw = ExportSocket.read(fd, NBDClientGreeting.size) else { return nil }
        let client: NBDClientGreeting
        do { client = try NBDClientGreeting(decoding: raw, offered: offered) } catch {
            logger.info("nbd: dropping a client: \(error)")
            return nil
        }
        for _ in 0..<limits.options {
            guard let headerBytes = ExportSocket.read(fd, NBDOptionHeader.size) else { return nil }
            let header: NBDOptionHeader
            do { header = try NBDOptionHeader(decoding: headerBytes) } catch {
                logger.info("nbd: dropping a client during option haggling: \(error)")
                return nil
            }
            guard let data = ExportSocket.read(fd, Int(header.length)) else { return nil }
            switch header.option {
            case .exportName:
                guard let name = String(validating: data, as: UTF8.self), accepts(name), let terms = currentTerms() else {
                    logger.info("nbd: NBD_OPT_EXPORT_NAME for an export not served; dropping the client")
                    return nil
                }
                let reply = NBDExportNameReply(size: terms.geometry.size, flags: terms.flags, noZeroes: client.flags.contains(.noZeroes))
                return ExportSocket.write(fd, reply.encoded()) ? terms : nil
            case .abort:
                _ = send(NBDOptionReply(option: .abort, type: .ack))
                return nil
            case .list:
                guard data.isEmpty else {
                    guard send(.error(.errInvalid, to: .list, "NBD_OPT_LIST carries no data")) else { return nil }
                    continue
                }
                var w = NBDWireWriter()
                w.integer(UInt32(name.utf8.count))
                w.append(name.utf8)
                guard send(NBDOptionReply(option: .list, type: .server, data: w.bytes)),
                      send(NBDOptionReply(option: .list, type: .ack)) else { return nil }
            case .info, .go:
                let request: NBDInfoRequest
                do { request = try NBDInfoRequest(decoding: data) } catch {
                    guard send(.error(.errInvalid, to: header.option, "\(error)")) else { return nil }
                    continue
                }
                guard accepts(request.name) else {
                    guard send(.error(.errUnknown, to: header.option, "no export named \(request.name.debugDescription); this server has \(name.debugDescription)")) else { return nil }
                    continue
                }
                guard let terms = currentTerms() else {
                    guard send(.error(.errShutdown, to: header.option, "the disk is not connected")) else { return nil }
                    continue
                }
                var items: [NBDInfo] = [.export(size: terms.geometry.size, flags: terms.flags), .blockSize(terms.blockSizes)]
                if request.requests.contains(.name) { items.append(.name(name)) }
                if request.requests.contains(.description) { items.append(.description("a XenPV guest's virtual block device")) }
                for item in items {
                    guard let payload = try? item.encoded(),
                          send(NBDOptionReply(option: header.option, type: .info, data: payload)) else { return nil }
                }
                guard send(NBDOptionReply(option: header.option, type: .ack)) else { return nil }
                if header.option == .go { return terms }
            default:
                // STARTTLS, STRUCTURED_REPLY, the meta contexts and anything newer.
                guard send(.error(.errUnsupported, to: header.option, "\(header.option) is not supported")) else { return nil }
            }
        }
        logger.info("nbd: a client sent \(limits.options) options without choosing an export; dropping it")
        return nil
    }

    private func accepts(_ requested: String) -> Bool { requested.isEmpty || requested == name }

    private func currentTerms() -> ExportTerms? {
        device.exportGeometry.map { ExportTerms(geometry: $0, limits: limits) }
    }

    private func send(_ reply: NBDOptionReply) -> Bool {
        guard let bytes = try? reply.encoded() else { return false }
        return ExportSocket.write(fd, bytes)
    }

    /// The transmission phase's input: taken by the device's thread where it has one,
    /// else (or once it is handed back) by the reader.
    private func serve(_ terms: ExportTerms) {
        self.terms = terms
        condition.lock()
        deviceTakesInput = true
        condition.unlock()
        if device.serveInput(self, descriptor: fd) {
            condition.lock()
            while !inputOver && !inputTakenBack { condition.wait() }
            let over = inputOver
            condition.unlock()
            if over { return }
        }
        // From here the device's thread leaves the input alone: no longer asked (the
        // flag, under the lock a resume takes too, keeps a late resume from watching the
        // socket again), and done with a call it may be in (the input lock).
        condition.lock()
        deviceTakesInput = false
        condition.unlock()
        device.removeInput(descriptor: fd)
        while true {
            inputLock.lock()
            let progress = takeRequests(byDevice: false)
            inputLock.unlock()
            switch progress {
            case .ended: return
            case .done:
                condition.lock()
                while inputWaitsForRoom && !broken {
                    readerWaits = true
                    condition.wait()
                    readerWaits = false
                }
                condition.unlock()
            case .waiting:
                guard ExportSocket.awaitInput(fd) else { return }
            }
        }
    }

    /// On the device's thread, while the socket is readable (see ``BlockFrontInput``).
    func takeInput() {
        inputLock.lock()
        defer { inputLock.unlock() }
        condition.lock()
        let mine = deviceTakesInput && !inputOver
        condition.unlock()
        guard mine, takeRequests(byDevice: true) == .ended else { return }
        condition.lock()
        inputOver = true
        condition.broadcast()
        condition.unlock()
        device.removeInput(descriptor: fd)
    }

    /// The device closed: the reader takes the input back.
    func inputHandedBack() {
        condition.lock()
        inputTakenBack = true
        condition.broadcast()
        condition.unlock()
    }

    /// Takes the requests the socket holds, checks each and starts it, without waiting:
    /// `.waiting` once it holds no more, `.done` when one did not fit the connection's
    /// bounds (``inputWaitsForRoom``), `.ended` at the input's end (the client left,
    /// disconnected, or broke the protocol). Under `inputLock`.
    private func takeRequests(byDevice: Bool) -> ExportInput.Progress {
        var taken = 0
        defer { if taken > 0 { onTaken(taken, byDevice) } }
        guard let terms else { return .ended }
        while true {
            switch partial {
            case .payload(let work, var done):
                let buffer = work.payload!
                switch input.fill(buffer.bytes.baseAddress!, count: buffer.bytes.count, done: &done) {
                case .done:
                    partial = .none
                    start(work)
                case .waiting:
                    partial = .payload(work, done: done)
                    return .waiting
                case .ended:
                    // The client vanished mid-write: nothing of it reaches the disk.
                    partial = .none
                    buffers.give(buffer)
                    release(work.cost)
                    return .ended
                }
            case .swallow(var left):
                var done = 0
                let p = input.fill(nil, count: left, done: &done)
                left -= done
                partial = left > 0 ? .swallow(left: left) : .none
                if p != .done { return p }
            case .none:
                let p = input.buffer(NBDRequest.size)
                if p != .done { return p }
                let request: NBDRequest
                header.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: input.bytes[0..<NBDRequest.size])) }
                do { request = try NBDRequest(decoding: header) } catch {
                    logger.info("nbd: dropping a client that sent garbage: \(error)")
                    return .ended
                }
                switch terms.decide(request) {
                case .disconnect:
                    return .ended
                case .hangUp(let why):
                    logger.info("nbd: dropping a client: \(why)")
                    return .ended
                case .refuse(let error):
                    guard reserve(0) else { return .done }
                    input.consume(NBDRequest.size)
                    taken += 1
                    if request.command == .write && request.length > 0 { partial = .swallow(left: Int(request.length)) }
                    enqueue(Reply(header: NBDSimpleReply(error: error, handle: request.handle), data: nil, cost: 0))
                case .run:
                    let length = Int(request.length)
                    let carriesData = request.command == .write || request.command == .read
                    let cost = carriesData ? length : 0
                    guard reserve(cost) else { return .done }
                    input.consume(NBDRequest.size)
                    taken += 1
                    if request.command == .write && length > 0 {
                        let work = ExportRequest(request: request, payload: buffers.take(length), cost: cost, terms: terms)
                        partial = .payload(work, done: 0)
                    } else {
                        start(ExportRequest(request: request, payload: nil, cost: cost, terms: terms))
                    }
                }
            }
        }
    }

    /// Starts a checked request whose data (if any) has come.
    private func start(_ work: ExportRequest) {
        if !startTransfer(work) {
            Task(executorPreference: device.exportExecutor) { [self] in await perform(work) }
        }
    }

    /// Takes room for one more request of `cost` bytes, if the connection's bounds allow;
    /// else the input waits for room (``inputWaitsForRoom``) and it is false.
    private func reserve(_ cost: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if !broken && (inFlightRequests >= limits.inFlightRequests || (inFlightBytes > 0 && inFlightBytes + cost > limits.inFlightBytes)) {
            inputWaitsForRoom = true
            if deviceTakesInput { device.pauseInput(descriptor: fd) }
            return false
        }
        inFlightRequests += 1
        inFlightBytes += cost
        return true
    }

    private func release(_ cost: Int) {
        condition.lock()
        inFlightRequests -= 1
        inFlightBytes -= cost
        condition.broadcast()
        condition.unlock()
    }

    // MARK: Requests

    /// Starts a plain read or write (no FUA) through the device's callback path, if it has
    /// one: no task for it (see ``BlockExportDevice/startTransfer(_:at:buffer:done:)``).
    private func startTransfer(_ work: ExportRequest) -> Bool {
        let r = work.request
        guard r.length > 0, !r.flags.contains(.fua) else { return false }
        let data: OwnedBuffer?
        let buffer: OwnedBuffer
        let direction: BlockTransfer
        switch r.command {
        case .read:
            buffer = buffers.take(Int(r.length))
            data = buffer
            direction = .read
        case .write:
            guard let payload = work.payload else { return false }
            buffer = payload
            data = nil
            direction = .write
        default:
            return false
        }
        let started = device.startTransfer(direction, at: r.offset, buffer: buffer.bytes) { [self] error in
            answer(work, data: data, error: error.map { nbdErrno($0, r) } ?? .ok)
        }
        if !started, let d = data { buffers.give(d) }
        return started
    }

    private func perform(_ work: ExportRequest) async {
        let r = work.request
        var data: OwnedBuffer?
        var failure = NBDErrno.ok
        do {
            switch r.command {
            case .read:
                let buffer = buffers.take(Int(r.length))
                data = buffer
                try await device.read(at: r.offset, into: buffer.bytes)
            case .write:
                if let p = work.payload {
                    try await device.write(at: r.offset, from: UnsafeRawBufferPointer(p.bytes))
                }
                if r.flags.contains(.fua) { try await device.flush() }
            case .flush:
                try await device.flush()
            case .trim:
                if r.length > 0 { try await device.discard(at: r.offset, length: UInt64(r.length)) }
                if r.flags.contains(.fua) { try await device.flush() }
            case .writeZeroes:
                try await writeZeroes(r, terms: work.terms)
                if r.flags.contains(.fua) { try await device.flush() }
            default:
                failure = .invalid
            }
        } catch {
            failure = nbdErrno(error, r)
        }
        answer(work, data: data, error: failure)
    }

    /// The error number a failed request is answered with; logged.
    private func nbdErrno(_ error: any Error, _ r: NBDRequest) -> NBDErrno {
        logger.debug("nbd: \(r.command) at \(r.offset)+\(r.length): \(error)")
        return (error as? any NBDErrnoConvertible)?.nbdErrno ?? .io
    }

    /// Gives back the request's buffers and queues its reply.
    private func answer(_ work: ExportRequest, data: OwnedBuffer?, error errno: NBDErrno) {
        let r = work.request
        if let p = work.payload { buffers.give(p) }
        var data = data
        if errno != .ok, let d = data {
            buffers.give(d)
            data = nil
        }
        enqueue(Reply(header: NBDSimpleReply(error: errno, handle: r.handle), data: data, cost: work.cost))
    }

    private func writeZeroes(_ r: NBDRequest, terms: ExportTerms) async throws {
        let g = terms.geometry
        if g.canDiscard && g.discardZeroes && !r.flags.contains(.noHole) {
            if r.length > 0 { try await device.discard(at: r.offset, length: UInt64(r.length)) }
            return
        }
        var at = r.offset
        let end = r.offset + UInt64(r.length)
        while at < end {
            let n = Int(min(UInt64(zeros.bytes.count), end - at))
            try await device.write(at: at, from: UnsafeRawBufferPointer(rebasing: zeros.bytes[0..<n]))
            at += UInt64(n)
        }
    }

    // MARK: Writer

    /// Sends a finished reply: from the task that finished it when nothing else is being
    /// sent and the socket takes it all without waiting (no wake-up of the writer thread,
    /// which at queue depth 1 is most of a request's cost), else by the writer thread.
    /// With other requests in flight on a device with an executor, their answers tend to
    /// arrive together (blkfront collects a ring's responses in batches and resumes their
    /// tasks in one go): the reply waits for a task queued behind them on that executor,
    /// which sends every reply finished by then in one `sendmsg` (``flush()``): one system
    /// call and one wake-up of the client for the batch instead of one each.
    private func enqueue(_ reply: Reply) {
        condition.lock()
        if flushScheduled {
            replies.append(reply)
            condition.unlock()
            return
        }
        guard !sending, replies.isEmpty, !broken else {
            replies.append(reply)
            condition.broadcast()
            condition.unlock()
            return
        }
        if inFlightRequests > 1, let executor = device.exportExecutor {
            replies.append(reply)
            flushScheduled = true
            condition.unlock()
            Task(executorPreference: executor) { [self] in flush() }
            return
        }
        sending = true
        condition.unlock()
        var r = reply
        let outcome = transmit(&r, waiting: false)
        onSent(outcome == .done ? 1 : 0)
        condition.lock()
        sending = false
        switch outcome {
        case .done: finish(r)
        case .wouldBlock: replies.prepend(r)
        case .failed:
            broken = true
            finish(r)
        }
        if outcome != .done || readerWaits || (writerWaits && (!replies.isEmpty || readerDone)) {
            condition.broadcast()
        }
        condition.unlock()
        if outcome == .failed { hangUp() }
    }

    /// Sends the replies queued when a batch was scheduled (see ``enqueue(_:)``), as many as
    /// the socket takes without waiting; the rest go back to the front for the writer.
    private func flush() {
        condition.lock()
        flushScheduled = false
        guard !sending, !replies.isEmpty, !broken else {
            // Being sent, or the connection broke: the writer takes (or drops) what is left.
            if !replies.isEmpty { condition.broadcast() }
            condition.unlock()
            return
        }
        sending = true
        let count = min(replies.count, Self.batchLimit)
        for i in 0..<count { batch.initializeElement(at: i, to: replies.removeFirst()) }
        condition.unlock()
        let outcome = transmit(UnsafeMutableBufferPointer(rebasing: batch[0..<count]), waiting: false)
        condition.lock()
        sending = false
        // Sent whole (or dropped, if the connection broke), then what goes back to the front.
        var done = 0
        while done < count, outcome == .failed || batch[done].sent == batch[done].size {
            finish(batch[done])
            done += 1
        }
        if outcome == .failed { broken = true }
        let whole = outcome == .failed ? 0 : done
        replies.insert(contentsOf: batch[done..<count], at: 0)
        if !replies.isEmpty || readerWaits || (writerWaits && readerDone) { condition.broadcast() }
        condition.unlock()
        onSent(whole)
        if outcome == .failed { hangUp() }
    }

    /// Puts the replies' remaining bytes on the socket in one gathered send; without
    /// `waiting`, only what fits now. Each reply's `sent` says how far it got; only the
    /// first can have been partly sent before (the rest were queued whole behind it).
    private func transmit(_ batch: UnsafeMutableBufferPointer<Reply>, waiting: Bool) -> ExportSocket.SendOutcome {
        // Scratch for the headers and iovecs: on the stack for a batch of up to 32 replies
        // (temporary allocations of up to 1 KiB always are), not one array per send.
        withUnsafeTemporaryAllocation(byteCount: NBDSimpleReply.size * batch.count, alignment: 8) { headers in
            withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2 * batch.count) { vecs in
                var count = 0
                for (i, r) in batch.enumerated() {
                    let header = UnsafeMutableRawBufferPointer(rebasing: headers[(i * NBDSimpleReply.size)..<((i + 1) * NBDSimpleReply.size)])
                    r.header.encode(into: header)
                    vecs.initializeElement(at: count, to: iovec(iov_base: header.baseAddress, iov_len: header.count))
                    count += 1
                    if let d = r.data {
                        vecs.initializeElement(at: count, to: iovec(iov_base: d.bytes.baseAddress, iov_len: d.bytes.count))
                        count += 1
                    }
                }
                var sent = batch[0].sent
                let outcome = ExportSocket.send(fd, UnsafeMutableBufferPointer(rebasing: vecs[0..<count]), sent: &sent, waiting: waiting)
                for i in batch.indices {
                    batch[i].sent = min(sent, batch[i].size)
                    sent -= batch[i].sent
                }
                return outcome
            }
        }
    }

    /// One reply through the gathered send above.
    private func transmit(_ reply: inout Reply, waiting: Bool) -> ExportSocket.SendOutcome {
        withUnsafeMutablePointer(to: &reply) { transmit(UnsafeMutableBufferPointer(start: $0, count: 1), waiting: waiting) }
    }

    /// Frees a reply that is sent (or cannot be) and gives back its room. Under `condition`.
    private func finish(_ reply: Reply) {
        if let d = reply.data { buffers.give(d) }
        inFlightRequests -= 1
        inFlightBytes -= reply.cost
        if inputWaitsForRoom {
            // The reader, waiting, is signalled by the caller (``readerWaits``).
            inputWaitsForRoom = false
            if deviceTakesInput { device.resumeInput(descriptor: fd) }
        }
    }

    private func writerMain() {
        condition.lock()
        while true {
            while (replies.isEmpty || sending) && !(readerDone && inFlightRequests == 0) {
                writerWaits = true
                condition.wait()
                writerWaits = false
            }
            guard var reply = replies.popFirst() else {
                writerDone = true
                condition.broadcast()
                condition.unlock()
                return
            }
            sending = true
            let dead = broken
            condition.unlock()
            let failed = !dead && transmit(&reply, waiting: true) != .done
            if !dead { onSent(failed ? 0 : 1) }
            if failed {
                // The client is gone: wake the reader; what is left is dropped.
                hangUp()
            }
            condition.lock()
            if failed { broken = true }
            sending = false
            finish(reply)
            condition.broadcast()
        }
    }
}

/// A checked request and what it carries, handed to its task.
struct ExportRequest: Sendable {
    let request: NBDRequest
    let payload: OwnedBuffer?
    let cost: Int
    let terms: ExportTerms
}
