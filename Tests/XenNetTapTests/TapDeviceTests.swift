import Foundation
import NetTestSupport
import Glibc
import Testing
@testable import XenNetTap

/// Real TAP devices; these need root and /dev/net/tun (CI has both).
@Suite(.timeLimit(.minutes(5)), .enabled(if: canMakeNetworks, "needs root and /dev/net/tun"))
struct TapDeviceTests {
    @Test func tapJoinsABridgeInItsNamespace() async throws {
        let ns = try await TestNamespace("xpvbr")
        try await ns.run("ip", "link", "add", "xpvbr0", "type", "bridge")
        let tap = try NetworkNamespace.run(in: ns.path) { try TapDevice(name: "vif7.0") }
        #expect(tap.name == "vif7.0")
        try NetworkNamespace.run(in: ns.path) {
            try NetworkInterface.setMTU("vif7.0", 1500)
            try NetworkInterface.addToBridge("xpvbr0", interface: "vif7.0")
            try NetworkInterface.setUp("vif7.0")
            #expect(try NetworkInterface.macAddress("vif7.0").count == 6)
            #expect(throws: TapError.self) { try NetworkInterface.addToBridge("nosuchbr", interface: "vif7.0") }
        }
        let link = try await Shell.run("ip", "netns", "exec", ns.name, "ip", "-o", "link", "show", "vif7.0")
        #expect(link.contains("master xpvbr0"))
        #expect(link.contains("UP"))
        tap.close()
    }

    @Test func aLinuxStackPingsThroughTheTap() async throws {
        let ns = try await TestNamespace("xpvtap")
        let tap = try NetworkNamespace.run(in: ns.path) { try TapDevice(name: "xpv0", vnetHeader: true) }
        try await ns.run("ip", "addr", "add", "10.99.0.1/24", "dev", "xpv0")
        try await ns.run("ip", "link", "set", "xpv0", "up")

        let ping = Process()
        ping.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        ping.arguments = ["ip", "netns", "exec", ns.name, "ping", "-c", "2", "-i", "0.2", "-W", "3", "10.99.0.2"]
        ping.standardOutput = FileHandle.nullDevice
        try ping.run()

        // Answer as 10.99.0.2 until ping exits (ping's own -W bounds it; the loop stops
        // after 180 s at the most), on a thread of the test's own: the loop blocks in poll,
        // and the wait for ping's end with it. The test awaits what the thread reports.
        let (outcome, report) = AsyncStream.makeStream(of: Result<(answered: Int, status: Int32), any Error>.self)
        Thread {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
            defer { buffer.deallocate() }
            let result = Result { () throws -> Int in
                var answered = 0
                let deadline = Date().addingTimeInterval(180)
                while ping.isRunning, Date() < deadline {
                    var pfd = pollfd(fd: tap.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
                    guard poll(&pfd, 1, 100) > 0, let n = try tap.read(into: buffer) else { continue }
                    let header = VirtioNetHeader(bytes: UnsafeRawBufferPointer(buffer))
                    #expect(header.netifOffload != nil)
                    var frame = Array(buffer[VirtioNetHeader.size ..< n])
                    guard Responder.answer(&frame) else { continue }
                    var raw = VirtioNetHeader.plain.raw
                    try withUnsafeMutableBytes(of: &raw) { h in
                        try frame.withUnsafeMutableBytes { f in
                            let parts = [iovec(iov_base: h.baseAddress, iov_len: h.count), iovec(iov_base: f.baseAddress, iov_len: f.count)]
                            _ = try parts.withUnsafeBufferPointer { try tap.write($0) }
                        }
                    }
                    answered += 1
                }
                return answered
            }
            if ping.isRunning { ping.terminate() }
            ping.waitUntilExit()
            report.yield(result.map { ($0, ping.terminationStatus) })
            report.finish()
        }.start()
        var reported: Result<(answered: Int, status: Int32), any Error>?
        for await r in outcome { reported = r }
        let (answered, status) = try #require(reported).get()
        #expect(status == 0, "ping through the TAP failed")
        #expect(answered >= 3)  // one ARP reply and two echo replies at least
    }
}

/// Answers ARP requests and ICMP echo requests for 10.99.0.2, in place.
enum Responder {
    static let mac: [UInt8] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x02]

    static func answer(_ f: inout [UInt8]) -> Bool {
        guard f.count >= 42 else { return false }
        let type = Int(f[12]) << 8 | Int(f[13])
        let sender = Array(f[6 ..< 12])
        if type == 0x0806, f[21] == 1 {                       // ARP request
            let senderIP = Array(f[28 ..< 32]), targetIP = Array(f[38 ..< 42])
            f.replaceSubrange(0 ..< 6, with: sender)
            f.replaceSubrange(6 ..< 12, with: mac)
            f[21] = 2
            f.replaceSubrange(22 ..< 28, with: mac)
            f.replaceSubrange(28 ..< 32, with: targetIP)
            f.replaceSubrange(32 ..< 38, with: sender)
            f.replaceSubrange(38 ..< 42, with: senderIP)
            return true
        }
        if type == 0x0800, f[23] == 1, f[34] == 8 {            // ICMP echo request
            let ihl = Int(f[14] & 0x0f) * 4
            let src = Array(f[26 ..< 30]), dst = Array(f[30 ..< 34])
            f.replaceSubrange(0 ..< 6, with: sender)
            f.replaceSubrange(6 ..< 12, with: mac)
            f.replaceSubrange(26 ..< 30, with: dst)
            f.replaceSubrange(30 ..< 34, with: src)
            let icmp = 14 + ihl
            f[icmp] = 0
            f[icmp + 2] = 0
            f[icmp + 3] = 0
            let sum = checksum(f[icmp...])
            f[icmp + 2] = UInt8(sum >> 8)
            f[icmp + 3] = UInt8(sum & 0xff)
            return true
        }
        return false
    }

    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var sum: UInt32 = 0
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let hi = UInt32(bytes[i]) << 8
            let lo = i + 1 < bytes.endIndex ? UInt32(bytes[i + 1]) : 0
            sum += hi | lo
            i += 2
        }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
