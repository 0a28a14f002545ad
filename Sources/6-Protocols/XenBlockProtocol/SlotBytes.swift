import CXen

/// A private copy of one request slot: 112 bytes (the native slot), of which an i386
/// slot uses the first 108. All field reads come from here, never from shared memory.
@usableFromInline
struct SlotBytes {
    @usableFromInline var value: blkif_request

    @inlinable init(_ value: blkif_request) { self.value = value }

    @inlinable init() { value = blkif_request() }

    @inlinable func load<T: BitwiseCopyable>(_ offset: Int, as: T.Type) -> T {
        withUnsafeBytes(of: value) { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
    }

    @inlinable mutating func store<T: BitwiseCopyable>(_ v: T, at offset: Int) {
        withUnsafeMutableBytes(of: &value) { $0.storeBytes(of: v, toByteOffset: offset, as: T.self) }
    }
}

/// Offsets inside `struct blkif_request_segment`, from the imported C struct.
@usableFromInline
enum SegmentLayout {
    @usableFromInline static let stride = MemoryLayout<blkif_request_segment>.stride
    @usableFromInline static let gref = MemoryLayout<blkif_request_segment>.offset(of: \.gref)!
    @usableFromInline static let first = MemoryLayout<blkif_request_segment>.offset(of: \.first_sect)!
    @usableFromInline static let last = MemoryLayout<blkif_request_segment>.offset(of: \.last_sect)!
}
