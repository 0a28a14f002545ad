import NBDProtocol
import XenBlockFront

/// What an export serves: a disk with byte-addressed `async` I/O. `BlockFrontend`
/// (a guest's vbd) is one; ``MemoryBlockDevice`` another.
public protocol BlockExportDevice: AnyObject, Sendable {
    /// The disk's size and abilities, or nil while it has none (not yet connected).
    var exportGeometry: BlockExportGeometry? { get }
    /// Where the server runs a request's task, if the device has a preferred executor.
    var exportExecutor: (any TaskExecutor)? { get }
    /// Has a thread of the device's call `input`'s `takeInput()` whenever `descriptor`
    /// is readable, until ``removeInput(descriptor:)`` or `inputHandedBack()`; false if
    /// the device has no such thread, and the server reads on its own.
    /// (`BlockFrontend.serveInput(_:descriptor:)`: the queue thread that puts the requests
    /// on the ring takes them off the client's socket itself.)
    func serveInput(_ input: any BlockFrontInput, descriptor: Int32) -> Bool
    /// Leaves the input alone until ``resumeInput(descriptor:)``.
    func pauseInput(descriptor: Int32)
    /// Serves the input again.
    func resumeInput(descriptor: Int32)
    /// Forgets the input; a `takeInput()` running may finish.
    func removeInput(descriptor: Int32)
    /// Starts a read into `buffer` (or a write from it) and calls `done` with its outcome
    /// (nil: success) on a thread of the device's, where it must not block; false if the
    /// device has no such path, and the server awaits ``read(at:into:)`` or
    /// ``write(at:from:)`` in a task instead. For requests a server keeps many of in flight:
    /// no task per request.
    func startTransfer(_ direction: BlockTransfer, at offset: UInt64, buffer: UnsafeMutableRawBufferPointer,
                       done: @escaping @Sendable ((any Error)?) -> Void) -> Bool
    /// Reads `buffer.count` bytes at `offset`.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws
    /// Writes `buffer` at `offset`.
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) async throws
    /// Makes every completed write durable.
    func flush() async throws
    /// Forgets `length` bytes at `offset`.
    func discard(at offset: UInt64, length: UInt64) async throws
}

extension BlockExportDevice {
    /// None: the server's connection threads read their own input.
    public func serveInput(_ input: any BlockFrontInput, descriptor: Int32) -> Bool { false }
    /// Nothing to pause: no input is ever the device's.
    public func pauseInput(descriptor: Int32) {}
    /// Nothing to resume.
    public func resumeInput(descriptor: Int32) {}
    /// Nothing to remove.
    public func removeInput(descriptor: Int32) {}
    /// None: every request runs in a task.
    public func startTransfer(_ direction: BlockTransfer, at offset: UInt64, buffer: UnsafeMutableRawBufferPointer,
                              done: @escaping @Sendable ((any Error)?) -> Void) -> Bool { false }
}

/// Which way a ``BlockExportDevice/startTransfer(_:at:buffer:done:)`` moves data.
public enum BlockTransfer: Sendable {
    /// From the disk into the buffer.
    case read
    /// From the buffer to the disk.
    case write
}

/// The size and abilities of a ``BlockExportDevice``.
public struct BlockExportGeometry: Hashable, Sendable {
    /// Bytes on the disk.
    public var size: UInt64
    /// The smallest unit of I/O (the alignment every request must keep).
    public var sectorSize: UInt32
    /// Writes, trims and zeroing are refused.
    public var readOnly: Bool
    /// ``BlockExportDevice/flush()`` works.
    public var canFlush: Bool
    /// ``BlockExportDevice/discard(at:length:)`` works.
    public var canDiscard: Bool
    /// A discarded range reads back as zeros, so a discard can serve `NBD_CMD_WRITE_ZEROES`.
    public var discardZeroes: Bool

    /// A disk of `size` bytes with the given abilities.
    public init(size: UInt64, sectorSize: UInt32 = 512, readOnly: Bool = false, canFlush: Bool = true,
                canDiscard: Bool = false, discardZeroes: Bool = false) {
        self.size = size
        self.sectorSize = sectorSize
        self.readOnly = readOnly
        self.canFlush = canFlush
        self.canDiscard = canDiscard
        self.discardZeroes = discardZeroes
    }
}

/// An error a device throws that knows its NBD error number; any other error is `EIO`.
public protocol NBDErrnoConvertible: Error {
    /// The error number a client is sent.
    var nbdErrno: NBDErrno { get }
}
