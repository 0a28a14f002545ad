import NBDProtocol

/// The bounds an export holds each client to.
public struct BlockExportLimits: Hashable, Sendable {
    /// The largest read or write (the maximum block size advertised); a write announcing
    /// more costs the client its connection, since its data would have to be swallowed.
    public var maximumRequest: UInt32 = 32 << 20
    /// Bytes of requests a connection may have in flight (read buffers and write data); the
    /// connection's reader waits for room, so a client that never reads its replies stalls
    /// only itself.
    public var inFlightBytes = 64 << 20
    /// Requests (replies included) a connection may have in flight.
    public var inFlightRequests = 64
    /// Connections served at once; more are closed on accept.
    public var connections = 32
    /// Options a client may send before it must go into transmission.
    public var options = 128
    /// Seconds a client has to finish the handshake (each read and write of it): one that
    /// connects and stays silent is dropped, so idle sockets cannot hold every slot.
    public var handshakeSeconds = 30

    /// The defaults above.
    public init() {}
}

/// What the export offers a client, derived from the device once per connection.
struct ExportTerms: Sendable {
    let geometry: BlockExportGeometry
    let flags: NBDTransmissionFlags
    let blockSizes: NBDBlockSizeConstraints
    let maximumRequest: UInt32

    init(geometry: BlockExportGeometry, limits: BlockExportLimits) {
        self.geometry = geometry
        var f: NBDTransmissionFlags = [.hasFlags]
        if geometry.readOnly { f.insert(.readOnly) }
        if geometry.canFlush { f.formUnion([.sendFlush, .sendFUA]) }
        if !geometry.readOnly {
            if geometry.canDiscard { f.insert(.sendTrim) }
            // Zeroing works on every writable disk: discard where it zeroes, else written zeros.
            f.insert(.sendWriteZeroes)
        }
        // Every connection shares one device, whose flush covers every write completed
        // through it: a flush or FUA on one connection is visible on all.
        if geometry.canFlush || geometry.readOnly { f.insert(.canMultiConn) }
        flags = f
        let minimum = max(geometry.sectorSize, 512)
        blockSizes = NBDBlockSizeConstraints(minimum: minimum, preferred: max(minimum, 4096), maximum: limits.maximumRequest)
        maximumRequest = limits.maximumRequest
    }
}

/// What the server does with one request header, decided before any data is read.
enum ExportDecision: Equatable {
    /// Run it on the device.
    case run
    /// Answer with this error (after swallowing a write's data).
    case refuse(NBDErrno)
    /// `NBD_CMD_DISC`: finish what is in flight, then close.
    case disconnect
    /// Drop the connection: the request cannot be answered without trusting the client
    /// further (a write whose data is too large to swallow).
    case hangUp(String)
}

extension ExportTerms {
    /// Checks `request` against the export: proto.md's errors (`EINVAL` for unknown
    /// commands and flags, misaligned or oversized requests; `EPERM` for writes to a
    /// read-only export; `ENOSPC` for writes past the end).
    func decide(_ request: NBDRequest) -> ExportDecision {
        let g = geometry
        let writes = request.command == .write
        if writes && request.length > maximumRequest {
            return .hangUp("\(request.command) of \(request.length) bytes exceeds the \(maximumRequest)-byte maximum")
        }
        let allowed: NBDCommandFlags
        switch request.command {
        case .read, .flush, .trim, .write: allowed = .fua
        case .writeZeroes: allowed = [.fua, .noHole]
        case .disconnect: return .disconnect
        default: return .refuse(.invalid)
        }
        guard request.flags.subtracting(allowed).isEmpty else { return .refuse(.invalid) }
        if request.flags.contains(.fua) && !flags.contains(.sendFUA) { return .refuse(.invalid) }
        switch request.command {
        case .flush:
            return g.canFlush ? .run : .refuse(.invalid)
        case .trim where !flags.contains(.sendTrim), .writeZeroes where !flags.contains(.sendWriteZeroes):
            return .refuse(g.readOnly ? .permission : .invalid)
        default: break
        }
        if request.command != .read && g.readOnly { return .refuse(.permission) }
        let minimum = UInt64(blockSizes.minimum)
        guard request.offset % minimum == 0, UInt64(request.length) % minimum == 0 else { return .refuse(.invalid) }
        if request.command == .read && request.length > maximumRequest { return .refuse(.invalid) }
        let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
        guard !overflow, end <= g.size else { return .refuse(request.command == .read ? .invalid : .noSpace) }
        return .run
    }
}
