import CXen
import Glibc
import SystemPackage

/// A readiness set kept by the kernel: adding, changing or removing one descriptor costs
/// the same with five or five thousand watched, and a wait returns only the ready ones
/// (poll(2) over every connection makes each request pay for the idle ones). Its own
/// descriptor is readable while any watched one is ready, so a thread can sleep on the
/// whole set beside its other descriptors. Safe to change from any thread.
///
/// `struct epoll_event` is packed on x86_64 (12 bytes, data at offset 4) and not elsewhere;
/// entries are read and written at the kernel's offsets, not through the imported struct,
/// whose Swift layout need not match.
public struct Epoll: Sendable {
    /// The epoll descriptor: readable while a watched descriptor is ready.
    public let fd: Int32
    #if arch(x86_64)
    static let stride = 12, dataOffset = 4
    #else
    static let stride = 16, dataOffset = 8
    #endif

    /// An empty set; the error if the process may not create one (out of descriptors).
    public init() throws(Errno) {
        fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw Errno(rawValue: errno) }
    }

    /// Closes the set (its owner's last use).
    public func close() { _ = Glibc.close(fd) }

    /// Starts (or changes, with `modify`) watching `target` for `events`.
    public func watch(_ target: Int32, _ events: UInt32, modify: Bool = false) {
        control(modify ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, target, events)
    }

    /// Stops watching `target` (an error for one not watched is ignored).
    public func forget(_ target: Int32) { control(EPOLL_CTL_DEL, target, 0) }

    private func control(_ op: Int32, _ target: Int32, _ events: UInt32) {
        var entry = [UInt8](repeating: 0, count: 16)
        entry.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: events, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: target, toByteOffset: Self.dataOffset, as: Int32.self)
            _ = epoll_ctl(fd, op, target, raw.baseAddress!.assumingMemoryBound(to: epoll_event.self))
        }
    }

    /// Room for `capacity` ready entries, filled by `wait`.
    public struct Ready: Sendable {
        fileprivate var bytes: [UInt8]
        /// Entries one wait can fill.
        public var capacity: Int { bytes.count / Epoll.stride }
        /// Room for `capacity` entries.
        public init(capacity: Int) { bytes = [UInt8](repeating: 0, count: capacity * Epoll.stride) }

        /// Entry `i` of the last wait: the descriptor and what it is ready for.
        public subscript(i: Int) -> (fd: Int32, events: UInt32) {
            bytes.withUnsafeBytes { raw in
                (raw.loadUnaligned(fromByteOffset: i * Epoll.stride + Epoll.dataOffset, as: Int32.self),
                 raw.loadUnaligned(fromByteOffset: i * Epoll.stride, as: UInt32.self))
            }
        }
    }

    /// Waits at most `timeoutMs` (-1: forever); the count of ready entries, or -1 with errno.
    public func wait(_ ready: inout Ready, timeoutMs: Int32) -> Int32 {
        let capacity = Int32(ready.capacity)
        return ready.bytes.withUnsafeMutableBytes {
            epoll_wait(fd, $0.baseAddress!.assumingMemoryBound(to: epoll_event.self), capacity, timeoutMs)
        }
    }

    /// `EPOLLIN`.
    public static let readable = UInt32(EPOLLIN.rawValue)
    /// `EPOLLOUT`.
    public static let writable = UInt32(EPOLLOUT.rawValue)
}
