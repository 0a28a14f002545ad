import Atomics
import Foundation
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// Log-dirty in one process: every writer of a guest's frames is reported (its own
/// mapping through userfaultfd write-protect and PAGEMAP_SCAN, grant copies and
/// writable grant maps through the grant code), each write once, and stopping
/// releases everything.
@Suite(.timeLimit(.minutes(5)))
struct LogDirtyTests {
    private func frames(_ bitmap: DirtyBitmap) -> [UInt64] { bitmap.frames.map(\.rawValue) }

    private func write(_ domain: SimulatedDomain, _ frame: UInt64, _ value: UInt8 = 0x5A) {
        domain.memory(of: FrameNumber(frame)).storeBytes(of: value, toByteOffset: 17, as: UInt8.self)
    }

    @Test func guestWritesAreReportedOnceThenOnlyWhenWrittenAgain() throws {
        let m = try Machine(guestFrames: 1024)
        // Written before logging: not reported.
        write(m.guest, 7)
        try m.guest.startDirtyLog()
        #expect(frames(try m.guest.readAndClearDirty()) == [])
        // Frames never touched before (unpopulated) and one touched before.
        for f: UInt64 in [3, 7, 100, 1023] { write(m.guest, f) }
        // A run bigger than one scan's vector of regions (every other page: no merging).
        for f in stride(from: 200 as UInt64, to: 1000, by: 2) { write(m.guest, f) }
        let first = try m.guest.readAndClearDirty()
        #expect(frames(first) == [3, 7, 100] + Array(stride(from: 200 as UInt64, to: 1000, by: 2)) + [1023])
        #expect(first.frameCount == 1024)
        #expect(frames(try m.guest.readAndClearDirty()) == [])
        write(m.guest, 100, 1)
        write(m.guest, 100, 2)
        #expect(frames(try m.guest.readAndClearDirty()) == [100])
        // Reads are not writes.
        #expect(m.guest.memory(of: FrameNumber(3)).load(fromByteOffset: 17, as: UInt8.self) == 0x5A)
        #expect(frames(try m.guest.readAndClearDirty()) == [])
        // The guest's allocator zeroes what it hands out: those are its writes too.
        let pages = try m.guest.pageAllocator.allocatePages(2)
        #expect(frames(try m.guest.readAndClearDirty()) == [pages.first.rawValue, pages.first.rawValue + 1])
        try m.guest.stopDirtyLog()
        #expect(m.guest.outstanding().isEmpty)
    }

    @Test func grantCopyIntoAGuestFrameMarksIt() throws {
        let m = try Machine()
        let into = try m.guest.grantAccess(frame: FrameNumber(10), to: .dom0, readOnly: false)
        let from = try m.guest.grantAccess(frame: FrameNumber(11), to: .dom0, readOnly: true)
        try m.guest.startDirtyLog()
        let mapper = try m.dom0.openGrantMapper()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        memset(buffer, 0x77, 4096)
        var segments = [
            GrantCopySegment(source: .local(buffer), destination: .foreign(domain: m.guest.domainID, ref: into, offset: 100), length: 64),
            GrantCopySegment(source: .foreign(domain: m.guest.domainID, ref: from, offset: 0), destination: .local(buffer), length: 64),
        ]
        try segments.withUnsafeMutableBufferPointer { try mapper.copy($0) }
        #expect(segments.map(\.status) == [.okay, .okay])
        #expect(m.guest.memory(of: FrameNumber(10)).load(fromByteOffset: 100, as: UInt8.self) == 0x77)
        // The copy's destination only: reading frame 11 writes nothing of the guest's.
        #expect(frames(try m.guest.readAndClearDirty()) == [10])
        #expect(frames(try m.guest.readAndClearDirty()) == [])
        try m.guest.stopDirtyLog()
        try m.guest.endAccess(into)
        try m.guest.endAccess(from)
        mapper.close()
    }

    @Test func aWritableMapIsDirtyWhileMappedAndWhenUnmapped() throws {
        let m = try Machine()
        let rw = try m.guest.grantAccess(frame: FrameNumber(20), to: .dom0, readOnly: false)
        let ro = try m.guest.grantAccess(frame: FrameNumber(21), to: .dom0, readOnly: true)
        try m.guest.startDirtyLog()
        let mapper = try m.dom0.openGrantMapper()
        let writable = try mapper.map(rw, from: m.guest.domainID, writable: true)
        let readOnly = try mapper.map(ro, from: m.guest.domainID, writable: false)
        // The mapper may write at any moment: its frame is reported at every read-and-clear.
        #expect(frames(try m.guest.readAndClearDirty()) == [20])
        writable.memory.base.storeBytes(of: 0xEE, toByteOffset: 5, as: UInt8.self)
        #expect(m.guest.memory(of: FrameNumber(20)).load(fromByteOffset: 5, as: UInt8.self) == 0xEE)
        #expect(frames(try m.guest.readAndClearDirty()) == [20])
        _ = readOnly.memory.base.load(as: UInt8.self)
        try mapper.unmap(writable)
        try mapper.unmap(readOnly)
        // Unmapped since the last look: reported once more, then no longer.
        #expect(frames(try m.guest.readAndClearDirty()) == [20])
        #expect(frames(try m.guest.readAndClearDirty()) == [])
        try m.guest.stopDirtyLog()
        try m.guest.endAccess(rw)
        try m.guest.endAccess(ro)
        mapper.close()
        #expect(m.guest.outstanding().isEmpty)
    }

    @Test func stopReleasesEverythingAndLoggingCanStartAgain() throws {
        let m = try Machine()
        #expect(hypervisorError { _ = try m.guest.readAndClearDirty() }?.code == .errno(.invalidArgument))
        #expect(hypervisorError { try m.guest.stopDirtyLog() }?.code == .errno(.invalidArgument))
        try m.hv.startDirtyLog(m.guest.domainID)
        #expect(m.guest.isLoggingDirty)
        #expect(hypervisorError { try m.guest.startDirtyLog() }?.code == .errno(.resourceBusy))
        #expect(m.guest.outstanding().dirtyLogs == [m.guest.domainID])
        write(m.guest, 1)
        try m.hv.stopDirtyLog(m.guest.domainID)
        #expect(!m.guest.isLoggingDirty)
        #expect(m.guest.outstanding().isEmpty)
        // Writes while off are forgotten; a new log counts from its start.
        write(m.guest, 2)
        try m.hv.startDirtyLog(m.guest.domainID)
        write(m.guest, 3)
        #expect(frames(try m.hv.readAndClearDirty(m.guest.domainID)) == [3])
        try m.hv.stopDirtyLog(m.guest.domainID)
        #expect(hypervisorError { try m.hv.startDirtyLog(DomainID(77)) }?.code == .errno(.noSuchProcess))
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func destroyingALoggingDomainReportsAndReleasesIt() throws {
        let m = try Machine()
        try m.guest.startDirtyLog()
        let left = m.hv.destroyDomain(m.guest)
        #expect(left.dirtyLogs == [m.guest.domainID])
        #expect(!m.guest.isLoggingDirty)
        #expect(left.description.contains("log-dirty still on"))
    }

    /// Pre-copy as migration will do it, against a guest writing all the while: a
    /// first full copy, then rounds copying what each read-and-clear reports, then a
    /// last round once the writer stopped. A write the log missed would leave the
    /// copy different from the memory.
    @Test func preCopyRoundsWhileTheGuestWritesEndWithAnEqualCopy() throws {
        let m = try Machine(guestFrames: 2048)
        let frameCount = 2048
        let writes = 300_000
        let copy = UnsafeMutableRawPointer.allocate(byteCount: frameCount * 4096, alignment: 4096)
        defer { copy.deallocate() }
        try m.guest.startDirtyLog()
        let guest = m.guest
        let done = ManagedFlag()
        let writer = Thread {
            var rng = SystemRandomNumberGenerator()
            for i in 0..<writes {
                let frame = Int.random(in: 0..<frameCount, using: &rng)
                let offset = Int.random(in: 0..<512, using: &rng) * 8
                // Atomic words on both sides: the race is the point, and ThreadSanitizer (CI) must see it as intended.
                word(guest.memory(of: FrameNumber(UInt64(frame))) + offset).store(UInt64(i), ordering: .relaxed)
            }
            done.set()
        }
        writer.start()
        for f in 0..<frameCount { copyPage(m.guest.memory(of: FrameNumber(UInt64(f))), to: copy + f * 4096) }
        var rounds = 0
        var copied = 0
        func round() throws {
            let dirty = try m.guest.readAndClearDirty()
            for f in dirty.frames {
                copyPage(m.guest.memory(of: f), to: copy + Int(f.rawValue) * 4096)
            }
            rounds += 1
            copied += dirty.count
        }
        while !done.isSet { try round() }
        try round()  // the writer stopped: the last round takes what it wrote since the previous one
        #expect(memcmp(copy, m.guest.memory(of: FrameNumber(0)), frameCount * 4096) == 0, "\(rounds) rounds, \(copied) frames")
        try m.guest.stopDirtyLog()
    }

    @Test func theBitmapKeepsToItsFrames() {
        var b = DirtyBitmap(frameCount: 70)
        b.insert(FrameNumber(69))
        b.insert(FrameNumber(70))
        b.insert(first: FrameNumber(60), count: Int.max)
        b.formUnion(word: .max, at: 1)
        b.formUnion(word: .max, at: 2)
        #expect(b.frames.map(\.rawValue) == Array(60..<70))
        #expect(b.count == 10 && !b.contains(FrameNumber(70)) && b.contains(FrameNumber(64)))
        #expect(DirtyBitmap(frameCount: -1).isEmpty)
    }

    /// Figures, not assertions: `XENPV_LOGDIRTY_BENCH=1 swift test -c release --filter LogDirtyTests/readAndClearTime`.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["XENPV_LOGDIRTY_BENCH"] != nil))
    func readAndClearTime() throws {
        let hv = SimulatedHypervisor(dom0Frames: 64)
        let frames = 65536  // 256 MiB
        let guest = try hv.createDomain(frames: frames)
        for f in 0..<frames { write(guest, UInt64(f)) }  // populated, as a running guest's memory is
        try guest.startDirtyLog()
        for dirty in [0, 1, 64, 1024, 16384, 65536] {
            var times: [Double] = []
            for _ in 0..<7 {
                for i in 0..<dirty { write(guest, UInt64(i * frames / max(dirty, 1))) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                let got = try guest.readAndClearDirty()
                times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
                #expect(got.count == dirty)
            }
            times.sort()
            print("log-dirty read-and-clear, 256 MiB, \(dirty) dirty pages: median \(times[3]) ms, min \(times[0]) ms, max \(times[6]) ms")
        }
        try guest.stopDirtyLog()
        _ = hv.shutdown()
    }
}

/// A one-way flag a thread raises for another to see.
final class ManagedFlag: Sendable {
    private let value = ManagedAtomic<Bool>(false)
    /// Raises the flag; what the raising thread did before is visible to whoever sees it raised.
    func set() { value.store(true, ordering: .releasing) }
    /// Whether the flag was raised.
    var isSet: Bool { value.load(ordering: .acquiring) }
}

private func word(_ p: UnsafeMutableRawPointer) -> UnsafeAtomic<UInt64> {
    UnsafeAtomic(at: p.assumingMemoryBound(to: UnsafeAtomic<UInt64>.Storage.self))
}

/// A page copied word by word with relaxed loads, racing the writer as migration's copy does.
private func copyPage(_ from: UnsafeMutableRawPointer, to: UnsafeMutableRawPointer) {
    for i in stride(from: 0, to: 4096, by: 8) { to.storeBytes(of: word(from + i).load(ordering: .relaxed), toByteOffset: i, as: UInt64.self) }
}
