import Foundation
import NetTestSupport
import Glibc
import Testing
@testable import XenNetTap

/// A multi-queue TAP: a descriptor per queue, queues detached and attached again, the
/// device gone once every queue is closed. Root and /dev/net/tun.
@Suite(.timeLimit(.minutes(5)), .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct MultiQueueTapTests {
    @Test func queuesOpenDetachAttachAndCloseWithTheDevice() async throws {
        let ns = try await TestNamespace("xpvmq")
        let (first, second) = try NetworkNamespace.run(in: ns.path) {
            let first = try TapDevice(name: "xpvmq0", vnetHeader: true, multiQueue: true)
            return (first, try first.openQueue())
        }
        #expect(first.isMultiQueue && second.name == "xpvmq0")
        #expect(first.fileDescriptor != second.fileDescriptor)
        let queues = try await Shell.run("ip", "netns", "exec", ns.name, "ls", "/sys/class/net/xpvmq0/queues")
        #expect(queues.split(separator: "\n").filter { $0.hasPrefix("tx-") }.count == 2, "\(queues)")

        // Detach and attach again; asking twice for the same state changes nothing.
        try second.setQueueAttached(false)
        try second.setQueueAttached(false)
        #expect(!second.queueAttached)
        try second.setQueueAttached(true)
        #expect(second.queueAttached)

        // A TAP that is not multi-queue has no further queues.
        let plain = try NetworkNamespace.run(in: ns.path) { try TapDevice(name: "xpvsq0") }
        #expect(throws: TapError.self) { try plain.openQueue() }
        plain.close()

        first.close()
        #expect((try? await Shell.run("ip", "netns", "exec", ns.name, "ip", "link", "show", "xpvmq0")) != nil)
        second.close()
        #expect((try? await Shell.run("ip", "netns", "exec", ns.name, "ip", "link", "show", "xpvmq0")) == nil)
    }

    /// A frame for a TAP whose interface is down is dropped (false), not an error: a guest
    /// port delivering before the guest brought eth0 up must keep its queue running.
    @Test func aWriteToADownTapIsADropNotAnError() async throws {
        let ns = try await TestNamespace("xpvdown")
        let tap = try NetworkNamespace.run(in: ns.path) { try TapDevice(name: "xpvdn0", vnetHeader: false) }
        var frame = [UInt8](repeating: 0xff, count: 60)
        let sent = try frame.withUnsafeMutableBytes { b in
            var v = iovec(iov_base: b.baseAddress, iov_len: b.count)
            return try withUnsafePointer(to: &v) { try tap.write(UnsafeBufferPointer(start: $0, count: 1)) }
        }
        #expect(!sent)
        tap.close()
    }
}
