/// The numbers of the NBD protocol (the NBD project's `doc/proto.md`), each a typed value
/// whose doc line names the constant it stands for.
public enum NBDMagic {
    /// `NBDMAGIC` (`INIT_PASSWD`): the first 8 bytes a server sends.
    public static let initPassword: UInt64 = 0x4E42_444D_4147_4943
    /// `IHAVEOPT`: the server's second 8 bytes and the magic of every option request.
    public static let option: UInt64 = 0x4948_4156_454F_5054
    /// The magic of every option reply (`0x3e889045565a9`).
    public static let optionReply: UInt64 = 0x0003_E889_0455_65A9
    /// `NBD_REQUEST_MAGIC`.
    public static let request: UInt32 = 0x2560_9513
    /// `NBD_SIMPLE_REPLY_MAGIC` (formerly `NBD_REPLY_MAGIC`).
    public static let simpleReply: UInt32 = 0x6744_6698
    /// `NBD_STRUCTURED_REPLY_MAGIC` (recognised, never sent by this module's server).
    public static let structuredReply: UInt32 = 0x668E_33EF
}

/// The 16 handshake flags a server sends after `IHAVEOPT`.
public struct NBDHandshakeFlags: OptionSet, Hashable, Sendable {
    /// The flags as sent.
    public var rawValue: UInt16
    /// Wraps raw flags.
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_FIXED_NEWSTYLE` (bit 0).
    public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_NO_ZEROES` (bit 1): the 124 zero bytes after `NBD_OPT_EXPORT_NAME` may be left out.
    public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// The 32 client flags a client answers the handshake flags with.
public struct NBDClientFlags: OptionSet, Hashable, Sendable {
    /// The flags as sent.
    public var rawValue: UInt32
    /// Wraps raw flags.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_FLAG_C_FIXED_NEWSTYLE` (bit 0).
    public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_C_NO_ZEROES` (bit 1).
    public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)
    /// Every flag proto.md defines; a server drops a client that sets any other.
    public static let known: NBDClientFlags = [.fixedNewstyle, .noZeroes]
}

/// The 16 transmission flags describing an export.
public struct NBDTransmissionFlags: OptionSet, Hashable, Sendable {
    /// The flags as sent.
    public var rawValue: UInt16
    /// Wraps raw flags.
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_FLAG_HAS_FLAGS` (bit 0): always set.
    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    /// `NBD_FLAG_READ_ONLY` (bit 1).
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    /// `NBD_FLAG_SEND_FLUSH` (bit 2).
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    /// `NBD_FLAG_SEND_FUA` (bit 3).
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    /// `NBD_FLAG_ROTATIONAL` (bit 4).
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    /// `NBD_FLAG_SEND_TRIM` (bit 5).
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    /// `NBD_FLAG_SEND_WRITE_ZEROES` (bit 6).
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    /// `NBD_FLAG_SEND_DF` (bit 7).
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    /// `NBD_FLAG_CAN_MULTI_CONN` (bit 8).
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
}

/// An option a client sends during option haggling.
public struct NBDOption: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The option number as sent.
    public var rawValue: UInt32
    /// Wraps an option number (any value: unknown ones are answered `NBD_REP_ERR_UNSUP`).
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_OPT_EXPORT_NAME` (1).
    public static let exportName = NBDOption(rawValue: 1)
    /// `NBD_OPT_ABORT` (2).
    public static let abort = NBDOption(rawValue: 2)
    /// `NBD_OPT_LIST` (3).
    public static let list = NBDOption(rawValue: 3)
    /// `NBD_OPT_STARTTLS` (5).
    public static let startTLS = NBDOption(rawValue: 5)
    /// `NBD_OPT_INFO` (6).
    public static let info = NBDOption(rawValue: 6)
    /// `NBD_OPT_GO` (7).
    public static let go = NBDOption(rawValue: 7)
    /// `NBD_OPT_STRUCTURED_REPLY` (8).
    public static let structuredReply = NBDOption(rawValue: 8)

    /// The constant's name, or the number.
    public var description: String {
        switch self {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        default: "option \(rawValue)"
        }
    }
}

/// The type of an option reply.
public struct NBDOptionReplyType: RawRepresentable, Hashable, Sendable {
    /// The reply type as sent.
    public var rawValue: UInt32
    /// Wraps a reply type.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `NBD_REP_ACK` (1).
    public static let ack = NBDOptionReplyType(rawValue: 1)
    /// `NBD_REP_SERVER` (2): one export of `NBD_OPT_LIST`.
    public static let server = NBDOptionReplyType(rawValue: 2)
    /// `NBD_REP_INFO` (3): one information item of `NBD_OPT_INFO` or `NBD_OPT_GO`.
    public static let info = NBDOptionReplyType(rawValue: 3)
    /// `NBD_REP_ERR_UNSUP` (2^31 + 1).
    public static let errUnsupported = NBDOptionReplyType(rawValue: 1 << 31 | 1)
    /// `NBD_REP_ERR_POLICY` (2^31 + 2).
    public static let errPolicy = NBDOptionReplyType(rawValue: 1 << 31 | 2)
    /// `NBD_REP_ERR_INVALID` (2^31 + 3).
    public static let errInvalid = NBDOptionReplyType(rawValue: 1 << 31 | 3)
    /// `NBD_REP_ERR_PLATFORM` (2^31 + 4).
    public static let errPlatform = NBDOptionReplyType(rawValue: 1 << 31 | 4)
    /// `NBD_REP_ERR_TLS_REQD` (2^31 + 5).
    public static let errTLSRequired = NBDOptionReplyType(rawValue: 1 << 31 | 5)
    /// `NBD_REP_ERR_UNKNOWN` (2^31 + 6): no such export.
    public static let errUnknown = NBDOptionReplyType(rawValue: 1 << 31 | 6)
    /// `NBD_REP_ERR_SHUTDOWN` (2^31 + 7).
    public static let errShutdown = NBDOptionReplyType(rawValue: 1 << 31 | 7)
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD` (2^31 + 8).
    public static let errBlockSizeRequired = NBDOptionReplyType(rawValue: 1 << 31 | 8)
    /// Error replies have bit 31 set.
    public var isError: Bool { rawValue & (1 << 31) != 0 }
}

/// An information type of `NBD_REP_INFO` (and of the request list of `NBD_OPT_INFO`/`GO`).
public struct NBDInfoType: RawRepresentable, Hashable, Sendable {
    /// The type as sent.
    public var rawValue: UInt16
    /// Wraps an information type.
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_INFO_EXPORT` (0): size and transmission flags.
    public static let export = NBDInfoType(rawValue: 0)
    /// `NBD_INFO_NAME` (1).
    public static let name = NBDInfoType(rawValue: 1)
    /// `NBD_INFO_DESCRIPTION` (2).
    public static let description = NBDInfoType(rawValue: 2)
    /// `NBD_INFO_BLOCK_SIZE` (3).
    public static let blockSize = NBDInfoType(rawValue: 3)
}

/// A request's type in the transmission phase.
public struct NBDCommand: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The type as sent.
    public var rawValue: UInt16
    /// Wraps a request type (any value: unknown ones are answered `EINVAL`).
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_CMD_READ` (0).
    public static let read = NBDCommand(rawValue: 0)
    /// `NBD_CMD_WRITE` (1): followed by *length* bytes of data.
    public static let write = NBDCommand(rawValue: 1)
    /// `NBD_CMD_DISC` (2): no reply.
    public static let disconnect = NBDCommand(rawValue: 2)
    /// `NBD_CMD_FLUSH` (3).
    public static let flush = NBDCommand(rawValue: 3)
    /// `NBD_CMD_TRIM` (4).
    public static let trim = NBDCommand(rawValue: 4)
    /// `NBD_CMD_CACHE` (5).
    public static let cache = NBDCommand(rawValue: 5)
    /// `NBD_CMD_WRITE_ZEROES` (6).
    public static let writeZeroes = NBDCommand(rawValue: 6)
    /// `NBD_CMD_BLOCK_STATUS` (7).
    public static let blockStatus = NBDCommand(rawValue: 7)

    /// The constant's name, or the number.
    public var description: String {
        switch self {
        case .read: "NBD_CMD_READ"
        case .write: "NBD_CMD_WRITE"
        case .disconnect: "NBD_CMD_DISC"
        case .flush: "NBD_CMD_FLUSH"
        case .trim: "NBD_CMD_TRIM"
        case .cache: "NBD_CMD_CACHE"
        case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: "NBD_CMD_BLOCK_STATUS"
        default: "command \(rawValue)"
        }
    }
}

/// The 16 command flags of a request.
public struct NBDCommandFlags: OptionSet, Hashable, Sendable {
    /// The flags as sent.
    public var rawValue: UInt16
    /// Wraps raw flags.
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// `NBD_CMD_FLAG_FUA` (bit 0): reply only once the data is durable.
    public static let fua = NBDCommandFlags(rawValue: 1 << 0)
    /// `NBD_CMD_FLAG_NO_HOLE` (bit 1): `WRITE_ZEROES` must allocate, not punch.
    public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
    /// `NBD_CMD_FLAG_DF` (bit 2).
    public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)
    /// `NBD_CMD_FLAG_REQ_ONE` (bit 3).
    public static let requestOne = NBDCommandFlags(rawValue: 1 << 3)
}

/// The error field of a reply: the protocol's fixed set of errno-like values.
public struct NBDErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The value as sent.
    public var rawValue: UInt32
    /// Wraps an error value.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Success (0).
    public static let ok = NBDErrno(rawValue: 0)
    /// `EPERM` (1): a write or trim on a read-only export.
    public static let permission = NBDErrno(rawValue: 1)
    /// `EIO` (5).
    public static let io = NBDErrno(rawValue: 5)
    /// `ENOMEM` (12).
    public static let noMemory = NBDErrno(rawValue: 12)
    /// `EINVAL` (22): an unknown command or flag, a misaligned or oversized request.
    public static let invalid = NBDErrno(rawValue: 22)
    /// `ENOSPC` (28): a write beyond the end of the export.
    public static let noSpace = NBDErrno(rawValue: 28)
    /// `EOVERFLOW` (75).
    public static let overflow = NBDErrno(rawValue: 75)
    /// `ESHUTDOWN` (108): the server is shutting down.
    public static let shutdown = NBDErrno(rawValue: 108)

    /// The errno name, or the number.
    public var description: String {
        switch self {
        case .ok: "0"
        case .permission: "EPERM"
        case .io: "EIO"
        case .noMemory: "ENOMEM"
        case .invalid: "EINVAL"
        case .noSpace: "ENOSPC"
        case .overflow: "EOVERFLOW"
        case .shutdown: "ESHUTDOWN"
        default: "error \(rawValue)"
        }
    }
}
