import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulatorDaemon
@testable import XenSimulatorClient

extension ProcessTests {
    /// A granted page exposes that page's pool, never the granter's memory:
    /// what a hostile grantee (or dom0's grant copy) receives holds only what
    /// was shared with it.
    @Suite struct GrantConfinementTests {
        /// Written over everything a grantee must not see.
        static let secret: [UInt8] = Array("PRIVATE-of-granter-0123456789ab".utf8)
        /// Written in the pages granted to the prober, so the probe is shown to find what it may.
        static let granted: [UInt8] = Array("granted-to-the-prober-987654321".utf8)

        func call(_ fd: Int32, _ m: WireMessage) throws -> WireMessage {
            try #require(Wire.send(fd, m))
            return try #require(Wire.receive(fd))
        }

        /// Fills every page of `pages` with `pattern`, repeated.
        func fill(_ base: UnsafeMutableRawPointer, pages: Int, with pattern: [UInt8]) {
            let bytes = pages * XenPage.size
            pattern.withUnsafeBytes { p in
                var at = 0
                while at + p.count <= bytes {
                    memcpy(base + at, p.baseAddress!, p.count)
                    at += p.count
                }
            }
        }

        /// Maps all of `fd` read-only and counts the pages holding `pattern`.
        func pagesHolding(_ pattern: [UInt8], in fd: Int32) throws -> Int {
            var st = stat()
            try #require(fstat(fd, &st) == 0)
            let size = Int(st.st_size)
            guard size > 0 else { return 0 }
            let p = try #require(mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0))
            try #require(p != MAP_FAILED)
            defer { munmap(p, size) }
            let zero = [UInt8](repeating: 0, count: XenPage.size)
            var hits = 0
            for page in stride(from: 0, to: size, by: XenPage.size) {
                let n = min(XenPage.size, size - page)
                // Most pages were never touched; only the others are searched byte by byte.
                if zero.withUnsafeBytes({ memcmp(p + page, $0.baseAddress!, n) }) == 0 { continue }
                let found = pattern.withUnsafeBytes { pat in
                    (0...(n - pat.count)).contains { memcmp(p + page + $0, pat.baseAddress!, pat.count) == 0 }
                }
                if found { hits += 1 }
            }
            return hits
        }

        func expectProbeClean(_ fds: [Int32], grantedPages: Int, _ comment: Comment) throws {
            var seen = 0
            for fd in fds {
                var st = stat()
                try #require(fstat(fd, &st) == 0)
                // Sockets are not memory; everything else handed over is probed page by page.
                guard st.st_mode & S_IFMT == S_IFREG else { continue }
                #expect(try pagesHolding(Self.secret, in: fd) == 0, comment)
                seen += try pagesHolding(Self.granted, in: fd)
            }
            #expect(seen == grantedPages, comment)
        }

        @Test func aHostileGranteeFindsNothingButWhatWasGrantedToIt() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let granter = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                defer { granter.close() }
                let other = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 16), onDaemonLost: ignoreLoss)
                defer { other.close() }

                // The prober joins by hand, so it holds every descriptor it was ever sent.
                let prober = try rawConnection(socket)
                defer { close(prober) }
                let joined = try call(prober, WireMessage([DaemonOp.join.rawValue, 1, 16, 0]))
                try #require(joined.error == nil)
                var received = joined.fds
                defer { for fd in received { close(fd) } }
                let me = DomainID(UInt16(joined.words[1]))

                // The granter's private memory, and pages it shares with dom0 and with
                // another guest, hold the secret; two pages for the prober hold its share.
                let sharer = try granter.openGrantSharer()
                fill(granter.memory.base, pages: granter.memory.totalFrames, with: Self.secret)
                let forDom0 = try sharer.sharePages(count: 3, with: .dom0, writable: true)
                let forOther = try sharer.sharePages(count: 2, with: other.domainID, writable: true)
                fill(forDom0.memory.base, pages: 3, with: Self.secret)
                fill(forOther.memory.base, pages: 2, with: Self.secret)
                let mine = try sharer.sharePages(count: 1, with: me, writable: true)
                let mineReadOnly = try sharer.sharePages(count: 1, with: me, writable: false)
                fill(mine.memory.base, pages: 1, with: Self.granted)
                fill(mineReadOnly.memory.base, pages: 1, with: Self.granted)

                let g = UInt64(granter.domainID.rawValue)
                let rw = try call(prober, WireMessage([DaemonOp.map.rawValue, g, 1, 0, UInt64(mine.refs[0].rawValue)]))
                try #require(rw.error == nil && rw.fds.count == 1)
                received += rw.fds
                let ro = try call(prober, WireMessage([DaemonOp.map.rawValue, g, 0, 0, UInt64(mineReadOnly.refs[0].rawValue)]))
                try #require(ro.error == nil && ro.fds.count == 1)
                received += ro.fds
                // A read-only share arrives read-only: the descriptor will not map writable.
                #expect(mmap(nil, XenPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, ro.fds[0], 0) == MAP_FAILED && errno == EACCES)

                // Entries the granter writes by hand, as a buggy or colluding guest could,
                // naming its private frame, the other guest's pool and the read-only pool
                // (writably): each map is refused, and nothing is sent with the refusal.
                let toPrivate = try granter.memory.grantAccess(frame: FrameNumber(5), to: me, readOnly: false)
                let toOthers = try granter.memory.grantAccess(
                    frame: FrameNumber(UInt64(frameOf(forOther.refs[0], in: granter))), to: me, readOnly: false)
                let roWritable = try granter.memory.grantAccess(
                    frame: FrameNumber(UInt64(frameOf(mineReadOnly.refs[0], in: granter))), to: me, readOnly: false)
                for (ref, status) in [(toPrivate, GrantStatus.badPage), (toOthers, .permissionDenied), (roWritable, .permissionDenied)] {
                    let refused = try call(prober, WireMessage([DaemonOp.map.rawValue, g, 1, 0, UInt64(ref.rawValue)]))
                    #expect(refused.error?.code == .grant(status), "\(ref)")
                    #expect(refused.fds.isEmpty)
                    received += refused.fds
                }
                // Nor may a guest ask for another domain's table and pools.
                let foreign = try call(prober, WireMessage([DaemonOp.foreignAccess.rawValue, g]))
                #expect(foreign.error?.code == .errno(.notPermitted) && foreign.fds.isEmpty)
                received += foreign.fds

                // Every page of every descriptor the prober holds: its own memory and
                // table, and the pools its maps brought. The secret is in none of them.
                try expectProbeClean(received, grantedPages: 2, "the prober's descriptors")
            }
        }

        @Test func dom0GrantCopyReachesOnlyWhatIsSharedWithDom0() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let granter = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64), onDaemonLost: ignoreLoss)
                defer { granter.close() }
                let other = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 16), onDaemonLost: ignoreLoss)
                defer { other.close() }
                let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0, onDaemonLost: ignoreLoss)
                defer { dom0.close() }

                let sharer = try granter.openGrantSharer()
                fill(granter.memory.base, pages: granter.memory.totalFrames, with: Self.secret)
                let forOther = try sharer.sharePages(count: 1, with: other.domainID, writable: true)
                fill(forOther.memory.base, pages: 1, with: Self.secret)
                let forDom0 = try sharer.sharePages(count: 1, with: .dom0, writable: true)
                fill(forDom0.memory.base, pages: 1, with: Self.granted)

                let mapper = try dom0.openGrantMapper()
                var buffer = [UInt8](repeating: 0, count: 64)
                func copy(from ref: GrantRef, length: Int = 31) throws -> GrantStatus {
                    try buffer.withUnsafeMutableBytes { b in
                        var seg = [GrantCopySegment(source: .foreign(domain: granter.domainID, ref: ref, offset: 0),
                                                    destination: .local(b.baseAddress!), length: UInt16(length))]
                        try seg.withUnsafeMutableBufferPointer { try mapper.copy($0) }
                        return seg[0].status
                    }
                }
                func copy(to ref: GrantRef) throws -> GrantStatus {
                    try buffer.withUnsafeMutableBytes { b in
                        var seg = [GrantCopySegment(source: .local(b.baseAddress!),
                                                    destination: .foreign(domain: granter.domainID, ref: ref, offset: 100), length: 8)]
                        try seg.withUnsafeMutableBufferPointer { try mapper.copy($0) }
                        return seg[0].status
                    }
                }
                // What is shared with dom0 copies both ways.
                #expect(try copy(from: forDom0.refs[0]) == .okay && Array(buffer[0..<31]) == Self.granted)
                buffer[0..<8] = [1, 2, 3, 4, 5, 6, 7, 8]
                #expect(try copy(to: forDom0.refs[0]) == .okay)
                #expect((forDom0.memory.base + 100).loadUnaligned(as: UInt64.self) == 0x0807_0605_0403_0201)
                // A read-only share made after dom0 first looked: found (one refresh), read, not written.
                let readOnly = try sharer.sharePages(count: 1, with: .dom0, writable: false)
                fill(readOnly.memory.base, pages: 1, with: Self.granted)
                buffer = [UInt8](repeating: 0, count: 64)
                #expect(try copy(from: readOnly.refs[0]) == .okay && Array(buffer[0..<31]) == Self.granted)
                #expect(try copy(to: readOnly.refs[0]) == .permissionDenied)
                // Entries written by hand to dom0 naming a private frame or the other
                // guest's pool: no pool shared with dom0 holds them.
                buffer = [UInt8](repeating: 0, count: 64)
                let toPrivate = try granter.memory.grantAccess(frame: FrameNumber(5), to: .dom0, readOnly: false)
                let toOthers = try granter.memory.grantAccess(
                    frame: FrameNumber(UInt64(frameOf(forOther.refs[0], in: granter))), to: .dom0, readOnly: false)
                #expect(try copy(from: toPrivate) == .badPage)
                #expect(try copy(from: toOthers) == .badPage)
                #expect(try copy(to: toPrivate) == .badPage)
                #expect(!buffer.contains(where: { $0 != 0 }))

                // What dom0's foreign access hands over, probed page by page: the
                // table (read-only) and the two pages shared with dom0, no secret.
                let raw = try rawConnection(socket)
                defer { close(raw) }
                let joined = try call(raw, WireMessage([DaemonOp.join.rawValue, 0, 0, 0]))
                try #require(joined.error == nil)
                for fd in joined.fds { close(fd) }
                let foreign = try call(raw, WireMessage([DaemonOp.foreignAccess.rawValue, UInt64(granter.domainID.rawValue)]))
                defer { for fd in foreign.fds { close(fd) } }
                // The table, the pool of pages shared with dom0, and the granter's grant-writer bitmap (log-dirty).
                try #require(foreign.error == nil && foreign.fds.count == 4)
                #expect(mmap(nil, XenPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, foreign.fds[0], 0) == MAP_FAILED && errno == EACCES)
                try expectProbeClean(foreign.fds, grantedPages: 2, "dom0's foreign access")
            }
        }

        @Test func pinsPastTheLimitAreAnErrorNotATrap() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let guest = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 16), onDaemonLost: ignoreLoss)
                defer { guest.close() }
                // A guest maps its own grant, 256 times per call, over and over.
                let shared = try guest.openGrantSharer().sharePages(count: 1, with: guest.domainID, writable: false)
                let request = WireMessage([DaemonOp.map.rawValue, UInt64(guest.domainID.rawValue), 0, 0]
                                          + Array(repeating: UInt64(shared.refs[0].rawValue), count: 256))
                var handles: [UInt64] = []
                var refusal: HypervisorError?
                while refusal == nil, handles.count <= HypervisorDaemon.guestPinLimit / 256 {
                    do throws(HypervisorError) {
                        let reply = try guest.link.call(request)
                        for fd in reply.fds { close(fd) }
                        handles.append(reply.words[1])
                    } catch {
                        refusal = error
                    }
                }
                #expect(handles.count == HypervisorDaemon.guestPinLimit / 256)
                #expect(refusal?.code == .grant(.noSpace))
                // Unpinning makes room again; the daemon kept count exactly.
                _ = try guest.link.call(WireMessage([DaemonOp.unmap.rawValue, handles.removeLast()]))
                let again = try guest.link.call(request)
                for fd in again.fds { close(fd) }
                #expect(throws: HypervisorError.self) { _ = try guest.link.call(request) }
            }
        }

        @Test func aGuestHoldsABoundedNumberOfSharePools() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let raw = try rawConnection(socket)
                defer { close(raw) }
                let joined = try call(raw, WireMessage([DaemonOp.join.rawValue, 1, 16, 0]))
                try #require(joined.error == nil)
                for fd in joined.fds { close(fd) }
                // One pool per peer asked for, each in its own range of frames, until the limit.
                var firsts: Set<UInt64> = []
                for peer in 0..<UInt64(SharePoolRegistry.guestPools) {
                    let pool = try call(raw, WireMessage([DaemonOp.sharePool.rawValue, peer, 1]))
                    for fd in pool.fds { close(fd) }
                    try #require(pool.error == nil && pool.words.count == 3)
                    firsts.insert(pool.words[1])
                }
                #expect(firsts.count == SharePoolRegistry.guestPools)
                let refused = try call(raw, WireMessage([DaemonOp.sharePool.rawValue, 99, 1]))
                #expect(refused.error?.code == .errno(.noMemory) && refused.fds.isEmpty)
                // Malformed asks: a peer id past 16 bits, a reserved domain, a short record.
                #expect(try call(raw, WireMessage([DaemonOp.sharePool.rawValue, 1 << 20, 1])).error?.code == .errno(.invalidArgument))
                #expect(try call(raw, WireMessage([DaemonOp.sharePool.rawValue, 0x7FF0, 1])).error?.code == .errno(.invalidArgument))
                #expect(try call(raw, WireMessage([DaemonOp.sharePool.rawValue, 0])).error?.code == .errno(.invalidArgument))
            }
        }

        @Test func noDescriptorAGuestHoldsCanBeTruncatedUnderTheDaemon() async throws {
            // Every call to the daemon is a blocking round trip: on a thread of its own, never the pool.
            try await DaemonFixture.withDaemon { socket in
                let raw = try rawConnection(socket)
                defer { close(raw) }
                let joined = try call(raw, WireMessage([DaemonOp.join.rawValue, 1, 16, 0]))
                try #require(joined.error == nil && joined.fds.count == 3)
                defer { for fd in joined.fds { close(fd) } }
                let pool = try call(raw, WireMessage([DaemonOp.sharePool.rawValue, 0, 1]))
                try #require(pool.error == nil && pool.fds.count == 1)
                defer { close(pool.fds[0]) }
                var wake: [Int32] = [-1, -1]
                try #require(pipe(&wake) == 0)
                defer { close(wake[0]) }
                let channel = try call(raw, WireMessage([DaemonOp.bindUnbound.rawValue, 0], fds: [wake[1]]))
                close(wake[1])
                try #require(channel.error == nil && channel.fds.count == 1)
                defer { close(channel.fds[0]) }
                // Its memory, its grant table (which the daemon reads on every map), its
                // pool (which its peers map) and a channel page (which the daemon and the
                // other end write): shrinking or growing any of them is refused.
                for fd in [joined.fds[0], joined.fds[1], pool.fds[0], channel.fds[0]] {
                    #expect(ftruncate(fd, 0) == -1 && errno == EPERM)
                    #expect(ftruncate(fd, 1 << 40) == -1 && errno == EPERM)
                }
                // The daemon reads the table as before: a map of a bad entry is an error, not a fault.
                let me = joined.words[1]
                #expect(try call(raw, WireMessage([DaemonOp.map.rawValue, me, 0, 0, 100])).error?.code == .grant(.badGrantRef))
            }
        }

        /// The frame `ref` of `domain`'s own table names.
        func frameOf(_ ref: GrantRef, in domain: RemoteHypervisor) -> UInt32 {
            (domain.memory.table + Int(ref.rawValue) * 8 + 4).load(as: UInt32.self)
        }
    }
}
