import CXen

/// One blkif response (`struct blkif_response`): the request's `id` and operation
/// echoed back with a status.
public struct BlockResponse: Hashable, Sendable {
    /// `id`: copied from the request.
    public var id: UInt64
    /// `operation`: copied from the request.
    public var operation: BlkifOperation
    /// `status`: `BLKIF_RSP_*`.
    public var status: BlkifStatus

    /// A response to request `id` with operation byte `operation` and `status`.
    public init(id: UInt64, operation: BlkifOperation, status: BlkifStatus) {
        self.id = id
        self.operation = operation
        self.status = status
    }

    /// Decodes a response already copied out of the ring (a frontend's side). Any status
    /// value is kept as is; the caller decides what an unknown one means.
    public init(_ copy: blkif_response, abi: BlkifABI = .native) {
        var c = copy
        let L = abi.layout
        let (id, op, st) = withUnsafeBytes(of: &c) { raw in
            (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
             raw.loadUnaligned(fromByteOffset: L.responseOperation, as: UInt8.self),
             raw.loadUnaligned(fromByteOffset: L.responseStatus, as: Int16.self))
        }
        self.init(id: id, operation: BlkifOperation(op), status: BlkifStatus(st))
    }

    /// Copies a response slot out of the ring once (`abi.responseSize` bytes) and decodes it.
    public init(copyingSlotAt slot: UnsafeRawPointer, abi: BlkifABI = .native) {
        var copy = blkif_response()
        // SAFETY: `copy` is 16 bytes; `responseSize` is 16 or 12.
        withUnsafeMutableBytes(of: &copy) { $0.baseAddress!.copyMemory(from: slot, byteCount: abi.responseSize) }
        self.init(copy, abi: abi)
    }

    /// The response as the slot value, built from a zeroed `blkif_response` so its
    /// padding (byte 9 and 12–15 natively) carries nothing of ours (XSA-216). For
    /// `.x86_32` the i386 bytes are the first `abi.responseSize`.
    public func encoded(abi: BlkifABI = .native) -> blkif_response {
        var value = blkif_response()
        let L = abi.layout
        withUnsafeMutableBytes(of: &value) { raw in
            raw.storeBytes(of: id, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: operation.rawValue, toByteOffset: L.responseOperation, as: UInt8.self)
            raw.storeBytes(of: status.rawValue, toByteOffset: L.responseStatus, as: Int16.self)
        }
        return value
    }

    /// Writes the whole response (`abi.responseSize` bytes, padding zeroed) into a ring slot
    /// in one copy (XSA-216: never write field by field over stale bytes).
    public func write(toSlot slot: UnsafeMutableRawPointer, abi: BlkifABI = .native) {
        var value = encoded(abi: abi)
        withUnsafeBytes(of: &value) { slot.copyMemory(from: $0.baseAddress!, byteCount: abi.responseSize) }
    }
}
