import CPageTracking
import CXen
import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
@testable import XenSimulatorClient

/// A resumed guest moves its old host's memory aside before mapping the new host's at
/// the same address. Registered for log-dirty with a userfaultfd that asked for remap
/// events, the mapping moves with its registration (whole page-table pages move; without
/// the feature Linux drops the registration and clears the protection entry by entry),
/// and the move returns because a reader takes its event.
@Suite(.timeLimit(.minutes(2)))
struct MoveAsideTests {
    /// `VmFlags` of the mapping that starts at `address`, from /proc/self/smaps.
    private func vmFlags(at address: UnsafeMutableRawPointer) -> [Substring]? {
        // Read to the end: procfs files report no size.
        guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile(),
            let smaps = String(data: data, encoding: .utf8)
        else { return nil }
        let start = String(UInt(bitPattern: address), radix: 16)
        var inside = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), line[..<dash].allSatisfy(\.isHexDigit) {
                inside = line[..<dash].drop { $0 == "0" } == start
            } else if inside, line.hasPrefix("VmFlags:") {
                return line.dropFirst("VmFlags:".count).split(separator: " ")
            }
        }
        return nil
    }

    private func memfd(frames: Int) throws -> Int32 {
        let fd = cxen_memfd_create("move-aside-test", 0)
        try #require(fd >= 0 && ftruncate(fd, off_t(frames * XenPage.size)) == 0)
        return fd
    }

    @Test func aRegisteredMappingMovesAsideWithItsRegistration() throws {
        let frames = 2048  // 8 MiB: whole page-table pages to move
        let old = try memfd(frames: frames), new = try memfd(frames: frames), table = try memfd(frames: 1)
        defer { for fd in [old, new, table] { close(fd) } }
        let memory = try GuestMemory(owner: DomainID(rawValue: 7), memoryFD: old, totalFrames: frames, frames: 0..<frames,
                                     tableFD: table, tableEntries: 512, refs: 0..<512)
        let bytes = frames * XenPage.size
        memset(memory.base, 0x11, bytes)
        let uffd = cpt_uffd_open(1)
        try #require(uffd >= 0, "userfaultfd with asynchronous write-protect: \(-uffd)")
        try #require(cpt_uffd_register(uffd, UInt64(UInt(bitPattern: memory.base)), UInt64(bytes)) == 0)
        memory.keepTracking(uffd)
        #expect(vmFlags(at: memory.base)?.contains("uw") == true)

        let events = try #require(memory.movingTrackedRanges())
        let aside = try memory.replace(memory.base, bytes: bytes, with: new, what: "memory")
        events.finish()

        // The new memory is at the old address; the old one, aside, still registered.
        memory.base.storeBytes(of: 0x22, toByteOffset: 5 * XenPage.size, as: UInt8.self)
        var byte: UInt8 = 0
        #expect(pread(new, &byte, 1, off_t(5 * XenPage.size)) == 1 && byte == 0x22)
        let moved = try #require(aside)
        #expect(moved.load(fromByteOffset: 5 * XenPage.size, as: UInt8.self) == 0x11)
        #expect(vmFlags(at: moved)?.contains("uw") == true, "\(vmFlags(at: moved) ?? [])")
        #expect(vmFlags(at: memory.base)?.contains("uw") == false)
        memory.dropMovedAside(limit: 0)
    }
}
