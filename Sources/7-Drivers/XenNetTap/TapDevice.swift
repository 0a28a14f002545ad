import CTap
import Glibc
import SystemPackage

/// What the reader of a TAP can take without the kernel finishing it first
/// (`TUN_F_*`): unchecksummed packets, and TCP packets up to 64 KiB to be
/// segmented later.
public struct TapOffloads: OptionSet, Hashable, Sendable {
    /// The `TUN_F_*` bits, as `TUNSETOFFLOAD` takes them.
    public var rawValue: UInt32
    /// Wraps `TUN_F_*` bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `TUN_F_CSUM`
    public static let checksum = TapOffloads(rawValue: UInt32(TUN_F_CSUM))
    /// `TUN_F_TSO4`
    public static let tcpv4Segmentation = TapOffloads(rawValue: UInt32(TUN_F_TSO4))
    /// `TUN_F_TSO6`
    public static let tcpv6Segmentation = TapOffloads(rawValue: UInt32(TUN_F_TSO6))
}

/// A Linux TAP device: Ethernet frames in and out through one non-blocking
/// descriptor. With a vnet header each frame carries a `VirtioNetHeader` that
/// says how its checksum and segmentation are to be finished, which is how
/// netif's `csum_blank` and GSO extras reach the Linux stack.
public final class TapDevice: @unchecked Sendable {
    // @unchecked: the descriptor is only an integer; reads and writes of one
    // frame are atomic in the kernel, and close happens once under the owner.
    /// The interface name the kernel gave the device (the one asked for, or the one it picked).
    public let name: String
    /// The non-blocking descriptor: one `read` takes one frame, one `write` sends one. Owned by the device, closed by ``close()`` or deinit.
    public let fileDescriptor: FileDescriptor
    /// Whether every frame read or written starts with a ``VirtioNetHeader`` (`IFF_VNET_HDR`).
    public let hasVnetHeader: Bool
    private var closed = false

    /// Creates (or attaches to) TAP `name`; an empty name lets the kernel pick. With
    /// `multiQueue` the device is a multi-queue TAP (`IFF_MULTI_QUEUE`) and this descriptor
    /// one of its queues: open the same name again, in the same namespace, for each further
    /// queue (``openQueue()``).
    public init(name: String = "", vnetHeader: Bool = true, multiQueue: Bool = false) throws(TapError) {
        var out = [CChar](repeating: 0, count: Int(IFNAMSIZ))
        let fd = ctap_open_queue(name, vnetHeader ? 1 : 0, multiQueue ? 1 : 0, &out)
        guard fd >= 0 else { throw .last("open TAP '\(name)'") }
        self.fileDescriptor = FileDescriptor(rawValue: fd)
        self.name = String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.hasVnetHeader = vnetHeader
        self.isMultiQueue = multiQueue
    }

    /// Whether the device is a multi-queue TAP and this descriptor one of its queues.
    public let isMultiQueue: Bool

    /// Opens another queue of this multi-queue TAP. Call it in the namespace the device
    /// lives in (the kernel finds it by name there).
    /// - Throws: ``TapError`` when the device is not multi-queue or the open fails.
    public func openQueue() throws(TapError) -> TapDevice {
        guard isMultiQueue else { throw TapError(.invalidArgument, "\(name) is not a multi-queue TAP") }
        return try TapDevice(name: name, vnetHeader: hasVnetHeader, multiQueue: true)
    }

    /// Attaches or detaches this queue of a multi-queue TAP (`TUNSETQUEUE`): the kernel
    /// steers no frame to a detached queue, so a queue nobody reads loses nothing. Asking
    /// for the state the queue is in does nothing (the kernel would refuse it).
    public func setQueueAttached(_ attached: Bool) throws(TapError) {
        guard attached != queueAttached else { return }
        guard ctap_set_queue(fileDescriptor.rawValue, attached ? 1 : 0) == 0 else {
            throw .last("TUNSETQUEUE on \(name)")
        }
        queueAttached = attached
    }

    /// Whether the kernel steers frames to this queue (a new queue is attached).
    public private(set) var queueAttached = true

    deinit { close() }

    /// Tells the kernel which unfinished packets this side can take.
    public func setOffloads(_ offloads: TapOffloads) throws(TapError) {
        guard ctap_set_offload(fileDescriptor.rawValue, offloads.rawValue) == 0 else {
            throw .last("TUNSETOFFLOAD on \(name)")
        }
    }

    /// Reads one frame into `buffer` (vnet header first, when enabled). Returns
    /// the bytes read, or nil when no frame is waiting.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TapError) -> Int? {
        while true {
            let n = Glibc.read(fileDescriptor.rawValue, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            switch Errno(rawValue: Glibc.errno) {
            case .interrupted: continue
            case .wouldBlock: return nil
            default: throw .last("read from \(name)")
            }
        }
    }

    /// Writes one frame gathered from `parts` (vnet header first, when enabled).
    /// Returns false when the device queue is full or the interface is down (the frame was
    /// not sent).
    public func write(_ parts: UnsafeBufferPointer<iovec>) throws(TapError) -> Bool {
        while true {
            let n = writev(fileDescriptor.rawValue, parts.baseAddress, Int32(parts.count))
            if n >= 0 { return true }
            switch Errno(rawValue: Glibc.errno) {
            case .interrupted: continue
            case .wouldBlock, .noBufferSpace: return false
            // The interface is down (tun answers EIO): the frame is dropped, as a NIC that
            // is down drops it, and the reader carries on.
            case .ioError: return false
            default: throw .last("write to \(name)")
            }
        }
    }

    /// Closes the descriptor; the kernel removes a non-persistent TAP with it.
    public func close() {
        guard !closed else { return }
        closed = true
        _ = Glibc.close(fileDescriptor.rawValue)
    }
}
