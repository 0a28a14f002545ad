import SystemPackage

/// Why a storage operation (or the engine) failed: a code to act on and a message.
public struct StorageError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong, in a form a backend can map to a blkif status.
    public enum Code: Hashable, Sendable {
        /// The system call failed with this errno (EIO from the device, ENOSPC, ...).
        case io(Errno)
        /// The engine or file system cannot do this (discard where punch-hole is unsupported).
        case notSupported
        /// A buffer address, buffer length or offset is not a multiple of the engine's alignment.
        case misaligned
        /// The byte range leaves the device, or the operation has no buffers.
        case outOfRange
        /// A write or discard on a read-only engine.
        case readOnly
        /// The engine is closed or could not be set up.
        case closed
    }

    /// What went wrong.
    public var code: Code
    /// The call and the file or range involved, for a person.
    public var message: String

    /// An error with `code`, described by `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The message, followed by the errno for an ``Code-swift.enum/io(_:)`` failure.
    public var description: String {
        switch code {
        case .io(let e): "\(message): \(e)"
        default: message
        }
    }
}
