import XenLocks

/// A disk in memory: a ``BlockExportDevice`` for tests and for trying a client, with the
/// same checks a real one makes (range, alignment, read-only).
public final class MemoryBlockDevice: BlockExportDevice {
    private let bytes: Locked<[UInt8]>
    /// Its geometry.
    public let geometry: BlockExportGeometry

    /// A zeroed disk of `geometry.size` bytes (at most 1 GiB).
    public init(geometry: BlockExportGeometry) {
        precondition(geometry.size <= 1 << 30, "a memory disk holds at most 1 GiB")
        self.geometry = geometry
        bytes = Locked([UInt8](repeating: 0, count: Int(geometry.size)))
    }

    /// The geometry given at creation.
    public var exportGeometry: BlockExportGeometry? { geometry }
    /// None: tasks run on the global executor.
    public var exportExecutor: (any TaskExecutor)? { nil }

    /// Why a memory disk refused a request.
    public struct Refusal: Error, Hashable, Sendable {
        /// What was refused, for a person.
        public var message: String
    }

    private func range(_ offset: UInt64, _ length: Int, writing: Bool) throws(Refusal) -> Range<Int> {
        if writing && geometry.readOnly { throw Refusal(message: "read-only") }
        let sector = UInt64(geometry.sectorSize)
        guard offset % sector == 0, UInt64(length) % sector == 0 else { throw Refusal(message: "misaligned") }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= geometry.size else { throw Refusal(message: "out of range") }
        return Int(offset)..<Int(end)
    }

    /// Copies out `buffer.count` bytes at `offset`.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws {
        let r = try range(offset, buffer.count, writing: false)
        bytes.withLock { b in b.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[r])) } }
    }

    /// Copies `buffer` in at `offset`.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) async throws {
        let r = try range(offset, buffer.count, writing: true)
        bytes.withLock { b in b.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[r]).copyMemory(from: buffer) } }
    }

    /// Nothing to do: memory has no cache to write back.
    public func flush() async throws {}

    /// Zeroes the range.
    public func discard(at offset: UInt64, length: UInt64) async throws {
        guard geometry.canDiscard else { throw Refusal(message: "no discard") }
        guard length <= UInt64(Int.max) else { throw Refusal(message: "out of range") }
        let r = try range(offset, Int(length), writing: true)
        bytes.withLock { b in for i in r { b[i] = 0 } }
    }

    /// A copy of `count` bytes at `offset` (for a test to look at).
    public func snapshot(at offset: Int, count: Int) -> [UInt8] {
        bytes.withLock { Array($0[offset..<offset + count]) }
    }
}
