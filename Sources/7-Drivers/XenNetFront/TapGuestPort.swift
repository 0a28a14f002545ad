import Glibc
import SystemPackage
import XenNetProtocol
import XenNetTap

/// A real Linux stack as the guest: the TAP device (in the guest's network
/// namespace) whose frames netfront sends and into which it delivers, with
/// checksum and GSO state carried in the virtio-net header.
///
/// On a multi-queue TAP (`TapDevice(name:multiQueue:)` and its `openQueue()`), each of a
/// multi-queue vif's queues reads and writes its own TAP queue: the guest kernel steers
/// each flow to one queue, so a flow stays on one vif queue, in order. Queues the current
/// connection does not use are detached, so the kernel steers nothing to them.
public final class TapGuestPort: GuestPort {
    /// The TAP device in the guest's namespace (its first queue).
    public let tap: TapDevice
    private let first: TapGuestQueue
    private let more: [TapGuestQueue]

    /// A port on `tap`, which must have been opened with a virtio-net header; `moreQueues`
    /// are the further queues of the same multi-queue TAP.
    public init(tap: TapDevice, moreQueues: [TapDevice] = []) {
        self.tap = tap
        first = TapGuestQueue(tap)
        more = moreQueues.map(TapGuestQueue.init)
    }

    /// The TAP's queues a connection of `count` queues uses, this one first; the kernel
    /// steers nothing to the others (they are detached until a connection uses them).
    /// - Throws: `TapError` when a queue cannot be attached or detached.
    public func queuePorts(_ count: Int) throws -> [any GuestPort] {
        let n = max(1, min(count, 1 + more.count))
        for (i, q) in more.enumerated() { try q.tap.setQueueAttached(i + 1 < n) }
        return [self] + more.prefix(n - 1).map { $0 as any GuestPort }
    }

    /// The TAP's non-blocking descriptor, readable while the guest stack sends a frame.
    public var fileDescriptor: FileDescriptor { tap.fileDescriptor }

    /// The guest kernel may hand over only what the backend takes.
    public func backendConnected(_ features: NetBackendFeatures) throws { try first.backendConnected(features) }

    /// Reads the next frame the guest stack sent, turning its virtio-net header into netif
    /// offload state; frames netif cannot describe (UDP fragmentation offload) are skipped.
    /// - Throws: the TAP's read errors.
    public func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        try first.nextOutbound(into: buffer)
    }

    /// Writes a received frame into the TAP behind a virtio-net header; a frame whose offload
    /// cannot be expressed there is dropped.
    /// - Throws: the TAP's write errors.
    public func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws {
        try first.deliver(frame, offload: offload)
    }
}

/// One queue of a TAP guest port: a descriptor of the TAP, frames behind virtio-net headers.
final class TapGuestQueue: GuestPort {
    let tap: TapDevice
    private let header = VirtioNetHeader.size
    init(_ tap: TapDevice) { self.tap = tap }

    var fileDescriptor: FileDescriptor { tap.fileDescriptor }

    func backendConnected(_ features: NetBackendFeatures) throws {
        var offloads: TapOffloads = []
        if features.checksumOffload {
            offloads.insert(.checksum)
            if features.scatterGather, features.segmentation.contains(.tcpv4) { offloads.insert(.tcpv4Segmentation) }
            if features.scatterGather, features.segmentation.contains(.tcpv6) { offloads.insert(.tcpv6Segmentation) }
        }
        try tap.setOffloads(offloads)
    }

    func nextOutbound(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)? {
        while let n = try tap.read(into: buffer) {
            // A frame netif cannot describe (UDP fragmentation offload) is skipped.
            guard n > header, let o = VirtioNetHeader(bytes: UnsafeRawBufferPointer(buffer)).netifOffload else { continue }
            return (header ..< n, FrameOffload(checksumBlank: o.checksumBlank, dataValidated: o.dataValidated, gso: o.gso))
        }
        return nil
    }

    func deliver(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws {
        guard let vnet = VirtioNetHeader(checksumBlank: offload.checksumBlank, dataValidated: offload.dataValidated,
                                         gso: offload.gso, frame: frame) else { return }
        var raw = vnet.raw
        try withUnsafeMutableBytes(of: &raw) { h in
            var parts = (iovec(iov_base: h.baseAddress, iov_len: header),
                         iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count))
            _ = try withUnsafePointer(to: &parts) { p in
                try p.withMemoryRebound(to: iovec.self, capacity: 2) { try tap.write(UnsafeBufferPointer(start: $0, count: 2)) }
            }
        }
    }
}
