import NBDProtocol
import XenBlockFront

extension BlockFrontend: BlockExportDevice {
    /// The vbd as the backend advertised it; discarded ranges read back as zeros (blkback
    /// punches holes).
    public var exportGeometry: BlockExportGeometry? {
        guard let info else { return nil }
        return BlockExportGeometry(size: info.byteCount, sectorSize: max(info.sectorSize, 512), readOnly: info.readOnly,
                                   canFlush: info.flush, canDiscard: info.discard, discardZeroes: info.discard)
    }

    /// The first queue's thread (see `BlockFrontExecutor`): requests go onto the ring and
    /// their tasks resume without a thread hop.
    public var exportExecutor: (any TaskExecutor)? { executor }

    /// `startRead(at:into:done:)` and `startWrite(at:from:done:)`: `done` runs on a queue thread.
    public func startTransfer(_ direction: BlockTransfer, at offset: UInt64, buffer: UnsafeMutableRawBufferPointer,
                              done: @escaping @Sendable ((any Error)?) -> Void) -> Bool {
        switch direction {
        case .read: startRead(at: offset, into: buffer, done: done)
        case .write: startWrite(at: offset, from: UnsafeRawBufferPointer(buffer), done: done)
        }
        return true
    }
}

extension BlockFrontError: NBDErrnoConvertible {
    /// `EINVAL` for what the request got wrong, `EPERM` for a read-only disk, `EIO` otherwise.
    public var nbdErrno: NBDErrno {
        switch code {
        case .misaligned, .outOfRange, .notSupported: .invalid
        case .readOnly: .permission
        case .ioError, .badStatus, .changed: .io
        case .closed: .shutdown
        }
    }
}
