import Glibc
import SystemPackage
import XenNetProtocol
import XenLocks
import XenNetTap

/// A vif as Xen's bridge mode makes it: a TAP named `vif<domid>.<devid>` on a
/// Linux bridge, carrying checksum and GSO state in its virtio-net header. For a
/// multi-queue vif the TAP is a multi-queue TAP with a queue (a descriptor) per vif queue,
/// and the kernel steers each flow to one of them.
public final class TapAttachment: NetworkAttachment {
    /// The TAP device (its first queue); closed when the vif disconnects.
    public let tap: TapDevice
    /// The TAP's queues after the first, one per further vif queue.
    private let more: [TapQueueAttachment]
    private let first: TapQueueAttachment
    /// What the vif's hotplug set up beyond the TAP (a NAT rule), undone once by ``close()``.
    private let teardown: Locked<(@Sendable () async -> Void)?>

    /// Creates the TAP (a multi-queue TAP with `queues` descriptors when `queues` > 1; call
    /// it in the namespace the TAP is to live in), tells the kernel which offloads the
    /// frontend can take on receive, brings it up and, given a bridge, enslaves it.
    public init(name: String, bridge: String?, offloads: TapOffloads, mtu: Int = 1500, queues: Int = 1) throws(TapError) {
        teardown = Locked(nil)
        tap = try TapDevice(name: name, vnetHeader: true, multiQueue: queues > 1)
        var more: [TapQueueAttachment] = []
        do {
            for _ in 1 ..< max(1, queues) { more.append(TapQueueAttachment(try tap.openQueue())) }
        } catch {
            for q in more { q.tap.close() }
            tap.close()
            throw error
        }
        self.more = more
        first = TapQueueAttachment(tap)
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

    /// Closes every queue's descriptor, so the kernel removes the interface (with its
    /// addresses and routes); ``close()`` does this and then the hotplug's undoing.
    public func closeDevice() {
        for q in more { q.tap.close() }
        tap.close()
    }

    /// Closes the TAP (the kernel removes the interface, its addresses and routes), then
    /// undoes what ``onClose(_:)`` registered. Idempotent.
    public func close() async {
        closeDevice()
        let body = teardown.withLock { current in
            defer { current = nil }
            return current
        }
        await body?()
    }

    /// The TAP's first `count` queues, this one first: each vif queue reads and writes its
    /// own. Queues beyond `count` (a TAP made with more queues than the vif has) are
    /// detached, so the kernel steers nothing to a queue nobody reads.
    public func receiveQueues(_ count: Int) -> [any NetworkAttachment] {
        let n = max(1, min(count, 1 + more.count))
        for (i, q) in more.enumerated() { try? q.tap.setQueueAttached(i + 1 < n) }
        return [self] + more.prefix(n - 1).map { $0 as any NetworkAttachment }
    }

    /// The first queue's non-blocking descriptor, readable while a frame waits.
    public var fileDescriptor: FileDescriptor? { tap.fileDescriptor }

    /// Reads one frame from the TAP's first queue and turns its virtio-net header into
    /// netif offload state; nil when none waits or the read held no more than a header.
    /// - Throws: `NetProtocolError` `.badGSO` for a GSO type netif cannot carry, and the
    ///   TAP's read errors.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        try first.receive(into: buffer)
    }

    /// Writes the frame into the TAP's first queue behind a virtio-net header carrying its
    /// offload state; false when the TAP's queue is full.
    /// - Throws: `NetProtocolError` `.badGSO` when the frame cannot carry the offload asked
    ///   for, and the TAP's write errors.
    public func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
        try first.send(frame, offload: offload)
    }
}

/// One queue of a TAP attachment: a descriptor of the TAP, frames behind virtio-net headers.
final class TapQueueAttachment: NetworkAttachment {
    let tap: TapDevice
    init(_ tap: TapDevice) { self.tap = tap }

    var fileDescriptor: FileDescriptor? { tap.fileDescriptor }

    /// Reads one frame from the TAP and turns its virtio-net header into netif offload
    /// state; nil when none waits or the read held no more than a header.
    /// - Throws: `NetProtocolError` `.badGSO` for a GSO type netif cannot carry, and the
    ///   TAP's read errors.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
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
    func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool {
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
