import CXen
import Foundation
import Glibc
import XenHypervisor
import XenNetProtocol
import XenNetTap

/// Makes a real Linux network stack the guest: a thread moves frames between
/// a TAP device (in the guest's network namespace) and a netfront queue,
/// carrying checksum and GSO state across in both directions.
///
/// Back-pressure: while the tx ring cannot take a largest packet, the TAP is
/// not read, so the kernel's queue holds the frames (and drops, as a full NIC
/// would), never this process.
public final class TapGuestAdapter: @unchecked Sendable {
    // @unchecked: the queue and buffers are used only by the adapter thread.
    private var queue: NetFrontQueue
    private let tap: TapDevice
    private let events: any EventChannels
    private let buffer: UnsafeMutableRawBufferPointer
    private let stopFD = cxen_eventfd(0, 1)
    private let finished = DispatchSemaphore(value: 0)
    /// Frames the TAP gave that netif cannot carry (bad size or offload).
    public private(set) var refused: UInt64 = 0
    /// Why the adapter stopped by itself, if it did.
    public private(set) var failure: (any Error)?

    public init(queue: consuming NetFrontQueue, tap: TapDevice, events: any EventChannels) {
        self.queue = queue
        self.tap = tap
        self.events = events
        buffer = .allocate(byteCount: VirtioNetHeader.size + Netif.minimumSlotsPerPacket * 4096, alignment: 64)
    }

    deinit {
        buffer.deallocate()
        close(stopFD)
    }

    public func start() {
        let thread = Thread { [self] in
            do { try run() } catch { failure = error }
            finished.signal()
        }
        thread.name = "netfront tap \(tap.name)"
        thread.start()
    }

    @discardableResult
    public func stop(timeout: Double = 5) -> Bool {
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
        let stopped = finished.wait(timeout: .now() + timeout) == .success
        if stopped { finished.signal() }
        return stopped
    }

    /// The frontend queue's counters, as of the last loop (read racily).
    public var counters: NetFrontCounters { queue.counters }

    /// Sends one frame; false when netif cannot carry its size.
    private func sendRefusingBadSizes(_ frame: UnsafeRawBufferPointer,
                                      _ offload: (checksumBlank: Bool, dataValidated: Bool, gso: NetExtraInfo?)) -> Bool {
        guard frame.count >= Netif.minimumPacketSize, frame.count <= Netif.maxPacketSize else { return false }
        // Capacity for a largest packet was checked by the caller.
        return (try? queue.send(frame, checksumBlank: offload.checksumBlank, dataValidated: offload.dataValidated,
                                gso: offload.gso)) ?? false
    }

    private func run() throws {
        let header = VirtioNetHeader.size
        let frameArea = UnsafeMutableRawBufferPointer(rebasing: buffer[header...])
        var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: events.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: tap.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)]
        while true {
            var worked = try queue.collectTransmitCompletions() > 0
            // Guest stack to backend, while a largest packet still fits.
            while queue.transmitCapacity > Netif.minimumSlotsPerPacket, let n = try tap.read(into: buffer) {
                worked = true
                guard n > header, let offload = VirtioNetHeader(bytes: UnsafeRawBufferPointer(buffer)).netifOffload else {
                    refused += 1
                    continue
                }
                let frame = UnsafeRawBufferPointer(rebasing: buffer[header ..< n])
                if !sendRefusingBadSizes(frame, offload) { refused += 1 }
            }
            // Backend to guest stack.
            while let packet = try queue.receive(into: frameArea) {
                worked = true
                let frame = UnsafeRawBufferPointer(rebasing: frameArea[0 ..< packet.length])
                guard let vnet = VirtioNetHeader(checksumBlank: packet.checksumBlank, dataValidated: packet.dataValidated,
                                                 gso: packet.gso, frame: frame) else {
                    refused += 1
                    continue
                }
                vnet.store(to: buffer.baseAddress!)
                var part = iovec(iov_base: buffer.baseAddress, iov_len: header + packet.length)
                _ = try withUnsafePointer(to: &part) { try tap.write(UnsafeBufferPointer(start: $0, count: 1)) }
            }
            if worked { continue }
            if try queue.prepareToSleep() { continue }
            fds[2].events = queue.transmitCapacity > Netif.minimumSlotsPerPacket ? Int16(POLLIN) : 0
            for i in fds.indices { fds[i].revents = 0 }
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), 1000) }
            if n < 0, errno != EINTR { throw HypervisorError.errno(.init(rawValue: errno), "poll in netfront TAP adapter") }
            if fds[0].revents != 0 { return }
            while let port = try events.pending() { try events.unmask(port) }
        }
    }
}
