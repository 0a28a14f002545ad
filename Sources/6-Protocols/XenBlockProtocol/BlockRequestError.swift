/// Why a request from the peer was refused: a code to act on, a message to read,
/// and the request's `id` and operation byte so the backend can still answer it.
public struct BlockRequestError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Which check the request failed.
    public enum Code: Hashable, Sendable {
        /// The operation byte is not one blkif.h defines (answered `BLKIF_RSP_EOPNOTSUPP`, as Linux blkback does).
        case unknownOperation
        /// A defined but optional operation this device did not advertise (flush, barrier,
        /// discard, secure discard, indirect).
        case unsupportedOperation
        /// `nr_segments` is outside 1...11 for read/write, not 0 for a flush, or outside
        /// 1...`feature-max-indirect-segments` for an indirect request.
        case badSegmentCount
        /// A segment breaks `first_sect <= last_sect < sectors-per-page`.
        case badSegment
        /// The sector range leaves the device (or wraps around 2^64).
        case outOfRange
        /// A write, barrier or discard to a read-only device.
        case readOnly
        /// `indirect_op` is neither `BLKIF_OP_READ` nor `BLKIF_OP_WRITE`.
        case badIndirectOperation
    }

    /// Which check failed; ``status`` follows from it.
    public var code: Code
    /// What was wrong with the request, with the values read, for a log line.
    public var message: String
    /// The peer's `id`, to echo in the error response.
    public var id: UInt64
    /// The peer's operation byte, to echo in the error response.
    public var operation: BlkifOperation

    /// An error for the request with `id` and operation byte `operation`, so it can still be answered.
    public init(_ code: Code, _ message: String, id: UInt64, operation: BlkifOperation) {
        self.code = code
        self.message = message
        self.id = id
        self.operation = operation
    }

    /// The status to answer with: `BLKIF_RSP_EOPNOTSUPP` for what this device does not
    /// do, `BLKIF_RSP_ERROR` for a malformed request.
    public var status: BlkifStatus {
        switch code {
        case .unknownOperation, .unsupportedOperation: .notSupported
        default: .error
        }
    }

    /// The response that refuses the request.
    public var response: BlockResponse { BlockResponse(id: id, operation: operation, status: status) }

    /// `blkif request ID (OPERATION): MESSAGE`, for logs.
    public var description: String { "blkif request \(id) (\(operation)): \(message)" }
}
