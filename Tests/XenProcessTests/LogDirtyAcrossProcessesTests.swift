import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulatorClient
@testable import XenSimulatorDaemon

extension ProcessTests {
    /// Log-dirty with the daemon in a process of its own (`xenpv hypervisor`): the
    /// guest (this process) hands it its userfaultfd and pagemap, dom0 (this process
    /// too, another connection) starts, reads and stops the log, and every writer of
    /// the guest's frames is seen: the guest's own memory and share pools, dom0's
    /// grant copy and its writable map.
    @Suite(.serialized)
    struct LogDirtyAcrossProcessesTests {
        private func frames(_ b: DirtyBitmap) -> [UInt64] { b.frames.map(\.rawValue) }

        @Test func everyWriterOfAGuestIsLoggedByADaemonInAnotherProcess() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            // Every call below is a round trip to the daemon in its own process, blocking: the
            // joins and the guest's whole life on a thread of their own, never the pool.
            let dom0 = try await onThread { try RemoteHypervisor(socketPath: sock, as: .dom0, onDaemonLost: ignoreLoss) }
            defer { dom0.close() }

            let id = try await onThread { () throws -> DomainID in
                let guest = try RemoteHypervisor(socketPath: sock, as: .newGuest(frames: 256), onDaemonLost: ignoreLoss)
                let id = guest.domainID
                let own = try guest.pageAllocator.allocatePages(4)
                let sharer = try guest.openGrantSharer()
                let shared = try sharer.sharePages(count: 3, with: .dom0, writable: true)

                try dom0.startDirtyLog(id)
                #expect(frames(try dom0.readAndClearDirty(id)) == [])
                // The daemon holds the guest's userfaultfd and pagemap (the test below sees them go).
                let held = descriptorTargets(of: hv.pid)
                #expect(held.contains("anon_inode:[userfaultfd]") && held.contains { $0.hasSuffix("/pagemap") }, "\(held)")

                // The guest's writes to its own memory, seen from the daemon's process.
                own.memory.page(1).storeBytes(of: 1, as: UInt8.self)
                own.memory.page(3).storeBytes(of: 3, as: UInt8.self)
                let ownDirty = try dom0.readAndClearDirty(id)
                #expect(frames(ownDirty) == [own.first.rawValue + 1, own.first.rawValue + 3])
                #expect(frames(try dom0.readAndClearDirty(id)) == [])

                // Its writes to a page it shares (a share pool, above its 256 frames of memory).
                shared.memory.page(0).storeBytes(of: 0xA0, as: UInt8.self)
                let poolDirty = frames(try dom0.readAndClearDirty(id))
                #expect(poolDirty.count == 1 && poolDirty.allSatisfy { $0 >= 256 }, "\(poolDirty)")

                // dom0's grant copy into the second shared page: marked by dom0's process.
                let mapper = try dom0.openGrantMapper()
                var word: UInt64 = 0xC0C0_C0C0
                try withUnsafeMutableBytes(of: &word) { source in
                    var segment = [GrantCopySegment(source: .local(source.baseAddress!), destination: .foreign(domain: id, ref: shared.refs[1], offset: 8),
                                                    length: 8)]
                    try segment.withUnsafeMutableBufferPointer { try mapper.copy($0) }
                    #expect(segment[0].status == .okay)
                }
                #expect(shared.memory.page(1).load(fromByteOffset: 8, as: UInt64.self) == 0xC0C0_C0C0)
                let copyDirty = frames(try dom0.readAndClearDirty(id))
                #expect(copyDirty.count == 1 && copyDirty != poolDirty && copyDirty.allSatisfy { $0 >= 256 }, "\(copyDirty)")
                #expect(frames(try dom0.readAndClearDirty(id)) == [])

                // dom0's writable map of the third: dirty at every look while mapped, once more after unmap.
                let mapping = try mapper.map(shared.refs[2], from: id, writable: true)
                let mapped = frames(try dom0.readAndClearDirty(id))
                #expect(mapped.count == 1 && !mapped.contains(copyDirty[0]) && !mapped.contains(poolDirty[0]), "\(mapped)")
                mapping.memory.base.storeBytes(of: 0xEE, as: UInt8.self)
                #expect(frames(try dom0.readAndClearDirty(id)) == mapped)
                try mapper.unmap(mapping)
                #expect(frames(try dom0.readAndClearDirty(id)) == mapped)
                #expect(frames(try dom0.readAndClearDirty(id)) == [])

                // Stopped: nothing is read any more; started again, counting from then.
                try dom0.stopDirtyLog(id)
                #expect(throws: HypervisorError.self) { _ = try dom0.readAndClearDirty(id) }
                own.memory.page(0).storeBytes(of: 9, as: UInt8.self)
                try dom0.startDirtyLog(id)
                own.memory.page(2).storeBytes(of: 9, as: UInt8.self)
                #expect(frames(try dom0.readAndClearDirty(id)) == [own.first.rawValue + 2])
                try dom0.stopDirtyLog(id)

                // The guest leaves: its domain, its tracking and every descriptor the daemon held for it go.
                try sharer.unshare(shared)
                mapper.close()
                guest.close()
                return id
            }
            #expect(await eventually { await onThread { ((try? dom0.report())?.domains ?? [id]) == [.dom0] } }, "\(hv.output)")
            // Nothing of the guest's is held any more: no userfaultfd, no pagemap, none of
            // its memfds or share pools. (A count of all descriptors would not do: the
            // runtime opens some lazily, such as the timer of the daemon's later sweep.)
            let guestFiles: @Sendable (String) -> Bool = { t in
                t == "anon_inode:[userfaultfd]" || t.hasSuffix("/pagemap") || t.contains("-dom\(id.rawValue) ")
                    || t.contains("-dom\(id.rawValue)-") || t.contains("xenpv-share-pool")
            }
            #expect(await eventually { !descriptorTargets(of: hv.pid).contains(where: guestFiles) },
                    "the daemon still holds \(descriptorTargets(of: hv.pid).filter(guestFiles))")
        }

        /// A read-and-clear answers a few dirty words in its reply and many through a
        /// memfd: the frames come back alike either way.
        @Test func fewAndManyDirtyFramesComeBackAlike() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                defer { dom0.close() }
                let guest = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 32768), onDaemonLost: ignoreLoss)
                defer { guest.close() }
                let pages = try guest.pageAllocator.allocatePages(30000)
                let first = pages.first.rawValue
                try dom0.startDirtyLog(guest.domainID)
                _ = try dom0.readAndClearDirty(guest.domainID)
                // Every 64th page: one frame in each of ~469 words, past what a reply carries.
                let many = Array(stride(from: 0, to: pages.memory.count, by: 64))
                for i in many { pages.memory.page(i).storeBytes(of: 1, as: UInt8.self) }
                #expect(many.count > HypervisorDaemon.inlineWords)
                #expect(try dom0.readAndClearDirty(guest.domainID).frames.map(\.rawValue) == many.map { first + UInt64($0) })
                let few = [3, 4, 700, 29_999]
                for i in few { pages.memory.page(i).storeBytes(of: 2, as: UInt8.self) }
                #expect(try dom0.readAndClearDirty(guest.domainID).frames.map(\.rawValue) == few.map { first + UInt64($0) })
                #expect(try dom0.readAndClearDirty(guest.domainID).isEmpty)
                try dom0.stopDirtyLog(guest.domainID)
            }
        }

        /// A reply that carries its words is checked before any bit is taken.
        @Test func aMalformedInlineReplyIsRefused() throws {
            var bitmap = DirtyBitmap(frameCount: 1000)
            for f: UInt64 in [0, 63, 64, 999] { bitmap.insert(FrameNumber(f)) }
            let reply = try #require(HypervisorDaemon.inlineReply(bitmap))
            #expect(reply.words == [0, 1000, 3, 0, 1 | 1 << 63, 1, 1, 15, 1 << 39])
            #expect(try RemoteHypervisor.inlineBitmap(reply.words) == bitmap)
            var full = DirtyBitmap(frameCount: 64 * 300)
            for w in 0..<300 { full.insert(FrameNumber(UInt64(w * 64))) }
            #expect(HypervisorDaemon.inlineReply(full) == nil)
            for bad: [UInt64] in [
                [0, 1000], [0, 1000, 1], [0, 1000, 1, 0], [0, 1000, 1, 0, 1, 5],  // counts that do not match
                [0, 1000, 2, 3, 1, 3, 1], [0, 1000, 2, 5, 1, 3, 1],  // indexes repeated or descending
                [0, 1000, 1, 16, 1], [0, 1 << 25, 0], [0, 1000, UInt64.max],  // outside the bitmap, too big
            ] {
                #expect(throws: HypervisorError.self, "\(bad)") { try RemoteHypervisor.inlineBitmap(bad) }
            }
            // Bits past the frame count in the last word are dropped.
            #expect(try RemoteHypervisor.inlineBitmap([0, 1000, 1, 15, UInt64.max]).count == 1000 - 15 * 64)
        }

        /// Pre-copy rounds through the daemon in its own process while a thread of
        /// the guest writes: the copy taken round by round equals the memory at the end.
        @Test func preCopyRoundsThroughTheDaemonMissNoWrite() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            // The joins and the log's calls are round trips to the daemon in its own process,
            // blocking: each on a thread of its own, never the pool.
            let (dom0, guest) = try await onThread {
                (try RemoteHypervisor(socketPath: sock, as: .dom0, onDaemonLost: ignoreLoss),
                 try RemoteHypervisor(socketPath: sock, as: .newGuest(frames: 1024), onDaemonLost: ignoreLoss))
            }
            defer { dom0.close() }
            defer { guest.close() }
            let id = guest.domainID
            let pages = try guest.pageAllocator.allocatePages(512)
            let memory = pages.memory
            let first = pages.first.rawValue
            let copy = UnsafeMutableRawPointer.allocate(byteCount: memory.byteCount, alignment: 4096)
            defer { copy.deallocate() }
            try await onThread { try dom0.startDirtyLog(id) }
            let finished = WriterDone()
            let writer = Thread {
                var rng = SystemRandomNumberGenerator()
                for i in 0..<200_000 {
                    let page = Int.random(in: 0..<memory.count, using: &rng)
                    memory.page(page).storeBytes(of: UInt64(i), toByteOffset: Int.random(in: 0..<512, using: &rng) * 8, as: UInt64.self)
                }
                finished.set()
            }
            writer.start()
            memcpy(copy, memory.base, memory.byteCount)
            var rounds = 0
            func round() async throws {
                let dirty = try await onThread { try dom0.readAndClearDirty(id) }
                for f in dirty.frames where f.rawValue >= first && f.rawValue < first + UInt64(memory.count) {
                    let i = Int(f.rawValue - first)
                    memcpy(copy + i * 4096, memory.page(i), 4096)
                }
                rounds += 1
            }
            while !finished.isSet {
                try await round()
                try await Task.sleep(nanoseconds: 1_000_000)
            }
            try await round()
            #expect(memcmp(copy, memory.base, memory.byteCount) == 0, "after \(rounds) rounds")
            try await onThread { try dom0.stopDirtyLog(id) }
        }

        @Test func onlyDom0LogsAndOnlyATrackedGuestCanBeLogged() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                defer { dom0.close() }
                // A guest that joins by hand hands over no write tracking: it cannot be logged.
                let raw = try rawConnection(socket)
                defer { close(raw) }
                let joined = try call(raw, WireMessage([DaemonOp.join.rawValue, 1, 16, 0]))
                try #require(joined.error == nil)
                for fd in joined.fds { close(fd) }
                let untracked = DomainID(UInt16(joined.words[1]))
                #expect(hypervisorCode { try dom0.startDirtyLog(untracked) } == .errno(.notSupported))
                #expect(hypervisorCode { try dom0.startDirtyLog(DomainID(999)) } == .errno(.noSuchProcess))
                // A guest may neither log another domain nor itself, nor hand over ranges beyond its frames.
                let guest = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 16), onDaemonLost: ignoreLoss)
                defer { guest.close() }
                #expect(hypervisorCode { try guest.startDirtyLog(guest.domainID) } == .errno(.notPermitted))
                let far = try call(raw, WireMessage([DaemonOp.trackWrites.rawValue, 0x1000_0000, 1 << 40, 1]))
                #expect(far.error?.code == .errno(.invalidArgument))
                let noTracker = try call(raw, WireMessage([DaemonOp.trackWrites.rawValue, 0x1000_0000, 0, 1]))
                #expect(noTracker.error?.code == .errno(.invalidArgument))
                // Reading or stopping a log that is off is an error, not a trap.
                #expect(hypervisorCode { _ = try dom0.readAndClearDirty(guest.domainID) } == .errno(.invalidArgument))
                #expect(hypervisorCode { try dom0.stopDirtyLog(guest.domainID) } == .errno(.invalidArgument))
            }
        }

        private func hypervisorCode(_ body: () throws -> Void) -> HypervisorError.Code? {
            do {
                try body()
                return nil
            } catch {
                return (error as? HypervisorError)?.code
            }
        }

        private func call(_ fd: Int32, _ m: WireMessage) throws -> WireMessage {
            guard Wire.send(fd, m), let reply = Wire.receive(fd) else { throw POSIXError(.EPIPE) }
            return reply
        }
    }
}

/// Raised by a writer thread when it is done; read by the test between rounds.
private final class WriterDone: @unchecked Sendable {
    // @unchecked: `done` is guarded by `lock`.
    private let lock = NSLock()
    private var done = false
    func set() { lock.withLock { done = true } }
    var isSet: Bool { lock.withLock { done } }
}

/// What each descriptor of `pid` refers to (`readlink /proc/PID/fd/N`), sorted.
private func descriptorTargets(of pid: Int32) -> [String] {
    let dir = "/proc/\(pid)/fd"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return names.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0) }
        .sorted()
}
