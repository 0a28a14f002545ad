import Dispatch
import Foundation
import Glibc
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// A simulator with one guest, the usual cast of a split-driver test.
struct Machine {
    let hv: SimulatedHypervisor
    let dom0: SimulatedDomain
    let guest: SimulatedDomain

    init(guestFrames: Int = 64) throws {
        hv = SimulatedHypervisor(dom0Frames: 64)
        dom0 = hv.dom0
        guest = try hv.createDomain(frames: guestFrames)
    }
}

/// True if `fd` is readable right now.
func isReadable(_ channels: any EventChannels) -> Bool {
    var pfd = pollfd(fd: channels.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
    return poll(&pfd, 1, 0) == 1
}

/// The status a failed grant operation carried, or nil.
func grantStatus(_ body: () throws -> Void) -> GrantStatus? {
    if case .grant(let s) = hypervisorError(body)?.code { return s }
    return nil
}

/// The error a call threw, or nil.
func hypervisorError(_ body: () throws -> Void) -> HypervisorError? {
    do {
        try body()
        return nil
    } catch {
        return error as? HypervisorError
    }
}

/// Runs `body` on `count` threads at once and awaits all of them, at most `seconds`
/// (180 by default, TestSupport's `minimumDeadline`: with the suites in parallel on two
/// cores a correct run can wait its turn for long). Returns false on timeout.
///
/// The wait happens on one more thread of its own, which resumes the caller: a test
/// (an `async` one, or a synchronous `@Test`, which swift-testing runs on the pool too)
/// must not hold a cooperative-pool thread while its threads run.
func runThreads(_ count: Int, seconds: Double = 180, _ body: @escaping @Sendable (Int) -> Void) async -> Bool {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        Thread {
            body(i)
            group.leave()
        }.start()
    }
    return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
        Thread { c.resume(returning: group.wait(timeout: .now() + seconds) == .success) }.start()
    }
}

/// A raw pointer that may cross into a `@Sendable` closure; the test owns the memory.
struct SendablePointer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
}

/// How many mappings of the memfd named `name` this process has right now,
/// read from `/proc/self/maps` (the kernel's own account, so an munmap that
/// did not happen cannot hide).
func mappingCount(ofMemfd name: String) -> Int {
    // /proc files report size 0; read until end of file.
    let fd = open("/proc/self/maps", O_RDONLY)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    let maps = String(decoding: bytes, as: UTF8.self)
    let needle = "/memfd:\(name) "
    return maps.split(separator: "\n").count { ($0 + " ").contains(needle) }
}
