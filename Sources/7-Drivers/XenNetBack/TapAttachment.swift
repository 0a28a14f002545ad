import Glibc
import SystemPackage
import XenNetProtocol
import XenLocks
import XenNetTap

/// A vif as Xen's bridge mode makes it: a TAP named `vif<domid>.<devid>` on a
/// Linux bridge, carrying checksum and GSO state in its virtio-net header.
public final class TapAttachment: NetworkAttachment {
    /// The TAP device; closed when the vif disconnects.
    public let tap: TapDevice
    /// What the vif's hotplug set up beyond the TAP (a NAT rule), undone once by ``close()``.
    private let teardown: Locked<(@Sendable () async -> Void)?>

    /// Creates the TAP, tells the kernel which offloads the frontend can take
    /// on receive, brings it up and, given a bridge, enslaves it.
    public init(name: String, bridge: String?, offloads: TapOffloads, mtu: Int = 1500) throws(TapError) {
        teardown = Locked(nil)
        tap = try TapDevice(name: name, vnetHeader: true)
        try tap.setOffloads(offloads)
        try NetworkInterface.setMTU(tap.name, mtu)
        if let bridge { try NetworkInterface.addToBridge(bridge, interface: tap.name) }
        try NetworkInterface.setUp(tap.name)
    }

    /// Runs `body` once when the attachment closes, after the TAP is gone (which takes its
    /// addresses and routes with it); bodies added later run first.
    public func onClose(_ body: @escaping @Sendable () async -> Void) {
        teardown.withLock { current in
            let previous = current
            current = { await body(); await previous?() }
        }
    }

    /// Closes the TAP (the kernel removes the interface, its addresses and routes), then
    /// undoes what ``onClose(_:)`` registered. Idempotent.
    public func close() async {
        tap.close()
        let body = teardown.withLock { current in
            defer { current = nil }
            return current
        }
        await body?()
    }

    /// The TAP's non-blocking descriptor, readable while a frame waits.
    public var fileDescriptor: FileDescriptor? { tap.fileDescriptor }

    /// Reads one frame from the TAP and turns its virtio-net header into netif offload
    /// state; nil when none waits or the read held no more than a header.
    /// - Throws: `NetProtocolError` `.badGSO` for a GSO type netif cannot carry, and the
    ///   TAP's read errors.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        guard let n = try tap.read(into: buffer) else { return nil }
        guard n > VirtioNetHeader.size else { return nil }
        let header = VirtioNetHeader(bytes: UnsafeRawBufferPointer(buffer))
        guard let offload = header.netifOffload else {
            throw NetProtocolError(.badGSO, "TAP frame with GSO type \(header.gsoType)")
        }
        return (VirtioNetHeader.size ..< n, FrameOffload(checksumBlank: offload.checksumBlank,
                                                        dataValidated: offload.dataValidated, gso: offload.gso))
    }

    /// Writes the frame behind a virtio-net header carrying its offload state; false when the
    /// TAP's queue is full.
    /// - Throws: `NetProtocolError` `.badGSO` when the frame cannot carry the offload asked
    ///   for, and the TAP's write errors.
    public func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
        guard let header = VirtioNetHeader(checksumBlank: offload.checksumBlank, dataValidated: offload.dataValidated,
                                           gso: offload.gso, frame: frame) else {
            throw NetProtocolError(.badGSO, "offload asked for a frame that cannot have it")
        }
        var raw = header.raw
        return try withUnsafeMutableBytes(of: &raw) { h in
            var parts = (iovec(iov_base: h.baseAddress, iov_len: h.count),
                         iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count))
            return try withUnsafePointer(to: &parts) { p in
                try p.withMemoryRebound(to: iovec.self, capacity: 2) { try tap.write(UnsafeBufferPointer(start: $0, count: 2)) }
            }
        }
    }
}
