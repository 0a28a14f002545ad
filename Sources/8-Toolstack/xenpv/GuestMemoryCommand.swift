import ArgumentParser
import Atomics
import Foundation
import Glibc
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenWorld

/// `xenpv guest memory`: a guest that writes its memory at a steady rate and goes
/// through save, restore and migration: on `control/shutdown = suspend` it stops
/// writing, checksums what it wrote, calls `suspend`, and after it returns checks
/// that its memory is what it wrote, at the same addresses, then writes on.
///
/// Each step is one line on stdout, for people and tests:
/// `xenpv guest memory: suspend checksum=… base=0x…` then `… resumed checksum=… equal=true`
/// (or `cancelled`).
struct GuestMemory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory", abstract: "Write memory at a steady rate; answer save, restore and migration.")

    @OptionGroup var options: GuestOptions
    @Option(help: "Pages of its memory the guest writes (and checks).") var pages = 1024
    @Option(help: "Pages written per second after every page was written once (0: idle then).") var rate = 1000
    @Option(help: "Pages shared with dom0 (their contents move too).") var shared = 4
    @Option(help: "Seconds a suspend may wait for the toolstack.") var suspendTimeout = 120.0

    func validate() throws {
        guard pages > 0, pages < options.frames else { throw ValidationError("--pages must be 1 to --frames - 1, not \(pages)") }
        guard rate >= 0, shared >= 0, shared <= 64 else { throw ValidationError("--rate must be 0 or more, --shared 0 to 64") }
    }

    func run() throws {
        let hv = try JoinedDomain.join(options.hypervisor, connect: options.connect, as: options.request(devices: []))
        defer { hv.close() }
        let dirtier = try GuestDirtier(hv, pages: pages, rate: rate, shared: shared)
        say("xenpv guest memory: joined as \(hv.domainID), \(pages) pages at \(dirtier.address)")
        dirtier.start()
        let control = GuestControl(store: hv.store, domain: hv.domainID)
        let requests = try ProcessSupport.runBlocking { try await control.requests() }
        let iterator = RequestIterator(requests)
        while let request = iterator.next() {
            switch request {
            case .suspend:
                dirtier.beforeSuspend()
                let outcome = try suspendDomain(hv, timeout: .seconds(suspendTimeout))
                dirtier.afterSuspend(resumed: outcome == .resumed)
            default:
                say("xenpv guest memory: \(request.rawValue) requested; wrote \(dirtier.written) pages")
                dirtier.stop()
                return
            }
        }
    }
}

/// A guest's memory written at a steady rate and checked across each suspend: what
/// `xenpv guest memory` runs, and `xenpv guest disk --dirty-rate` beside its disk job.
/// Around a suspend the writer pauses and checksums what it wrote, and after the
/// suspend returns checks that its memory is what it wrote, at the same addresses,
/// then writes on; one line each on stdout:
/// `xenpv guest memory: suspend checksum=… base=0x… written=…` then
/// `xenpv guest memory: resumed checksum=… base=0x… equal=true` (or `cancelled`).
final class GuestDirtier: @unchecked Sendable {
    // @unchecked: `before` and `checks` are guarded by `lock`; the rest is immutable.
    private let writer: PatternWriter
    private let lock = NSLock()
    private var before: UInt64?
    private var checks = (suspends: 0, unequal: 0)

    /// Allocates `pages` pages of the domain's memory (and `shared` more granted to dom0)
    /// for a writer of `rate` pages a second once each was written.
    init(_ hv: JoinedDomain, pages: Int, rate: Int, shared: Int = 0) throws {
        let memory = try hv.pageAllocator.allocatePages(pages)
        let sharedPages = shared > 0 ? try hv.openGrantSharer().sharePages(count: shared, with: .dom0, writable: true) : nil
        writer = PatternWriter(base: memory.memory.base, pages: pages, shared: sharedPages?.memory.base, sharedPages: shared, rate: rate)
    }

    /// The written pages' address in this process.
    var address: String { "0x" + String(UInt(bitPattern: writer.base), radix: 16) }

    /// Pages written so far.
    var written: Int { writer.written }

    func start() { writer.start() }
    func stop() { writer.stop() }

    /// Pauses the writer and checksums its pages, before the domain suspends. Blocks.
    func beforeSuspend() {
        let sum = writer.pauseAndChecksum()
        lock.withLock { before = sum }
        say("xenpv guest memory: suspend checksum=\(hex(sum)) base=\(address) written=\(writer.written)")
    }

    /// Checks the pages against the checksum taken before the suspend, then writes on. Blocks.
    func afterSuspend(resumed: Bool) {
        let after = writer.checksum()
        let equal = lock.withLock { () -> Bool in
            let equal = before == after
            checks.suspends += 1
            if !equal { checks.unequal += 1 }
            before = nil
            return equal
        }
        say("xenpv guest memory: \(resumed ? "resumed" : "cancelled") checksum=\(hex(after)) base=\(address) equal=\(equal)")
        writer.resume()
    }

    /// Stops the writer and checks every page holds what was last written to it; a
    /// line saying so, or an error naming what differs.
    func stopAndVerify() throws -> String {
        let badPage = writer.pauseAndVerify()
        writer.stop()
        let (suspends, unequal) = lock.withLock { checks }
        guard unequal == 0 else { throw CommandError("memory: \(unequal) of \(suspends) suspends changed the written pages") }
        if let badPage { throw CommandError("memory: page \(badPage) of \(writer.pages) does not hold what was last written to it") }
        return "xenpv guest: memory: \(writer.written) page writes at \(writer.rate) pages/s over \(writer.pages) pages verified,"
            + " equal across \(suspends) suspends"
    }

    private func hex(_ v: UInt64) -> String { String(v, radix: 16) }
}

/// The one place a guest program suspends its domain: what the device code wraps
/// (quiesce before, resume or reconnect after). A world that cannot suspend throws.
func suspendDomain(_ hv: JoinedDomain, timeout: Duration) throws -> SuspendOutcome {
    guard let suspending = hv.base as? any DomainSuspending else {
        throw CommandError("this world cannot suspend a domain")
    }
    let outcome = try suspending.suspend(timeout: timeout)
    // No device to reconnect: the old host may let the domain go at once.
    if outcome == .resumed { suspending.resumeSettled() }
    return outcome
}

/// Blocks the calling (main) thread for each request of an async stream.
private final class RequestIterator: @unchecked Sendable {
    // @unchecked: `queue` is guarded by `lock`.
    private let lock = NSLock()
    private var queue: [ShutdownRequest] = []
    private var ended = false
    private let ready = DispatchSemaphore(value: 0)

    init(_ stream: AsyncStream<ShutdownRequest>) {
        Task { [self] in
            for await r in stream {
                lock.withLock { queue.append(r) }
                ready.signal()
            }
            lock.withLock { ended = true }
            ready.signal()
        }
    }

    func next() -> ShutdownRequest? {
        while true {
            let (r, done) = lock.withLock { () -> (ShutdownRequest?, Bool) in
                if !queue.isEmpty { return (queue.removeFirst(), false) }
                return (nil, ended)
            }
            if let r { return r }
            if done { return nil }
            ready.wait()
        }
    }
}

/// A thread writing a counter pattern into the guest's pages at a steady rate.
private final class PatternWriter: @unchecked Sendable {
    // @unchecked: the pages are this process's; control is through atomics.
    let base: UnsafeMutableRawPointer
    let pages: Int
    let shared: UnsafeMutableRawPointer?
    let sharedPages: Int
    let rate: Int
    private let paused = ManagedAtomic<Bool>(false)
    private let idle = ManagedAtomic<Bool>(false)
    private let stopped = ManagedAtomic<Bool>(false)
    private let count = ManagedAtomic<Int>(0)

    init(base: UnsafeMutableRawPointer, pages: Int, shared: UnsafeMutableRawPointer?, sharedPages: Int, rate: Int) {
        (self.base, self.pages, self.shared, self.sharedPages, self.rate) = (base, pages, shared, sharedPages, rate)
    }

    // relaxed: a progress figure.
    var written: Int { count.load(ordering: .relaxed) }

    func start() {
        startDetachedThread(named: "guest-mem-write") { [self] in loop() }
    }

    private func loop() {
        var n = 0
        let interval = rate > 0 ? 1.0 / Double(rate) : 0
        // Every page once, at full speed: the memory holds something to move.
        while n < pages, !stopped.load(ordering: .acquiring), !paused.load(ordering: .acquiring) {
            write(n)
            n += 1
        }
        var next = Date()
        // acquiring/releasing: the pause handshake orders the writes before the checksum.
        while !stopped.load(ordering: .acquiring) {
            if paused.load(ordering: .acquiring) {
                idle.store(true, ordering: .releasing)
                usleep(200)
                continue
            }
            idle.store(false, ordering: .releasing)
            guard interval > 0 else {
                usleep(1000)
                continue
            }
            write(n)
            n += 1
            next = next.addingTimeInterval(interval)
            let wait = next.timeIntervalSinceNow
            if wait > 0 { usleep(UInt32(min(wait, 1) * 1e6)) } else if wait < -1 { next = Date() }
        }
    }

    private func write(_ n: Int) {
        let page = base + (n % pages) * XenPage.size
        let word = UInt64(n) &* 0x9E37_79B9_7F4A_7C15
        for i in stride(from: 0, to: XenPage.size, by: 512) { page.storeBytes(of: word &+ UInt64(i), toByteOffset: i, as: UInt64.self) }
        if let shared, sharedPages > 0 { (shared + (n % sharedPages) * XenPage.size).storeBytes(of: word, as: UInt64.self) }
        count.wrappingIncrement(ordering: .relaxed)
    }

    func pauseAndChecksum() -> UInt64 {
        paused.store(true, ordering: .releasing)
        while !idle.load(ordering: .acquiring) { usleep(100) }
        return checksum()
    }

    /// Pauses the writer and returns the first page that does not hold what was last
    /// written to it (nil when all do). Its `count` writes went to page `n % pages` for
    /// each n in turn, so the last write to page p is the largest such n below `count`.
    func pauseAndVerify() -> Int? {
        paused.store(true, ordering: .releasing)
        while !idle.load(ordering: .acquiring) { usleep(100) }
        let count = written
        return (0..<pages).first { p in
            let page = base + p * XenPage.size
            let word: UInt64 = count > p ? UInt64(p + pages * ((count - 1 - p) / pages)) &* 0x9E37_79B9_7F4A_7C15 : 0
            return stride(from: 0, to: XenPage.size, by: 512).contains { i in
                page.load(fromByteOffset: i, as: UInt64.self) != (count > p ? word &+ UInt64(i) : 0)
            }
        }
    }

    func resume() { paused.store(false, ordering: .releasing) }
    func stop() { stopped.store(true, ordering: .releasing) }

    /// FNV-1a over the written pages and the shared ones, 8 bytes at a time.
    func checksum() -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ p: UnsafeMutableRawPointer, _ n: Int) {
            let words = p.assumingMemoryBound(to: UInt64.self)
            for i in 0..<(n * XenPage.size / 8) { h = (h ^ words[i]) &* 0x100_0000_01B3 }
        }
        mix(base, pages)
        if let shared { mix(shared, sharedPages) }
        return h
    }
}
