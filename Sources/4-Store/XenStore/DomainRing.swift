import Atomics
import CXen
import XenHypervisor

/// One side of the per-domain xenstore page (`struct xenstore_domain_interface` in
/// `io/xs_wire.h`): two 1024-byte byte rings, `req` (guest → daemon) and `rsp` (daemon →
/// guest), with free-running indices masked by `MASK_XENSTORE_IDX`.
///
/// The peer is untrusted: each call reads the peer's index once, checks that it is at most a
/// ring ahead of ours (`EPROTO` otherwise; the daemon then records `XENSTORE_ERROR_RINGIDX`),
/// and copies bytes out before releasing them.
public struct XenStoreDomainRing: @unchecked Sendable {
    // @unchecked: `page` points into a shared page that the owner keeps mapped while this
    // value is used; all access to the indices goes through atomics.
    /// Which end of the page this value works: it picks the ring it writes and the one it reads.
    public enum Side: Sendable {
        /// The guest: produces requests, consumes responses.
        case guest
        /// The daemon: consumes requests, produces responses.
        case daemon
    }

    /// The mapped `xenstore_domain_interface` page. The caller keeps it mapped for as long as
    /// this value is used.
    public let page: UnsafeMutableRawPointer
    /// The end this value works: a guest writes `req` and reads `rsp`, the daemon the reverse.
    public let side: Side

    /// Bytes in each of the two rings: `XENSTORE_RING_SIZE` (1024, a power of two, so indices
    /// are masked rather than reduced).
    public static let size = Int(XENSTORE_RING_SIZE)
    static let reqOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.req)!
    static let rspOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.rsp)!
    static let reqConsOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.req_cons)!
    static let reqProdOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.req_prod)!
    static let rspConsOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.rsp_cons)!
    static let rspProdOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.rsp_prod)!
    package static let featuresOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.server_features)!
    package static let connectionOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.connection)!
    package static let errorOffset = MemoryLayout<xenstore_domain_interface>.offset(of: \.error)!

    /// Works the rings of the `xenstore_domain_interface` at `page` from `side`'s end.
    ///
    /// Nothing is read or written here; the page must stay mapped, page-aligned and
    /// writable for as long as the value is used.
    public init(page: UnsafeMutableRawPointer, side: Side) {
        self.page = page
        self.side = side
    }

    package func index(_ offset: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (page + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    private var outData: UnsafeMutableRawPointer { page + (side == .guest ? Self.reqOffset : Self.rspOffset) }
    private var inData: UnsafeMutableRawPointer { page + (side == .guest ? Self.rspOffset : Self.reqOffset) }
    private var outProd: UnsafeAtomic<UInt32> { index(side == .guest ? Self.reqProdOffset : Self.rspProdOffset) }
    private var outCons: UnsafeAtomic<UInt32> { index(side == .guest ? Self.reqConsOffset : Self.rspConsOffset) }
    private var inProd: UnsafeAtomic<UInt32> { index(side == .guest ? Self.rspProdOffset : Self.reqProdOffset) }
    private var inCons: UnsafeAtomic<UInt32> { index(side == .guest ? Self.rspConsOffset : Self.reqConsOffset) }

    /// Writes as many of `bytes` as fit; returns how many, or throws on a peer index that is
    /// more than a ring behind or ahead.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(XenStoreError) -> Int {
        // Acquiring: our slot writes below must not move before we see the peer freed them.
        let cons = outCons.load(ordering: .acquiring)
        let prod = outProd.load(ordering: .relaxed)  // ours: only we write it
        let used = prod &- cons
        guard used <= UInt32(Self.size) else {
            throw XenStoreError(.protocolViolation, "peer's consumer index is \(used) behind ours")
        }
        let n = min(bytes.count, Self.size - Int(used))
        var done = 0
        while done < n {
            let at = Int((prod &+ UInt32(done)) & UInt32(Self.size - 1))
            let chunk = min(n - done, Self.size - at)
            (outData + at).copyMemory(from: bytes.baseAddress! + done, byteCount: chunk)
            done += chunk
        }
        // Releasing: the bytes above must be visible before the peer sees the new index.
        if n > 0 { outProd.store(prod &+ UInt32(n), ordering: .releasing) }
        return n
    }

    /// Copies out up to `buffer.count` available bytes; returns how many.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        // Acquiring: the peer's bytes must not be read before its index is.
        let prod = inProd.load(ordering: .acquiring)
        let cons = inCons.load(ordering: .relaxed)  // ours
        let avail = prod &- cons
        guard avail <= UInt32(Self.size) else {
            throw XenStoreError(.protocolViolation, "peer's producer index is \(avail) ahead of ours")
        }
        let n = min(buffer.count, Int(avail))
        var done = 0
        while done < n {
            let at = Int((cons &+ UInt32(done)) & UInt32(Self.size - 1))
            let chunk = min(n - done, Self.size - at)
            (buffer.baseAddress! + done).copyMemory(from: inData + at, byteCount: chunk)
            done += chunk
        }
        // Releasing: our copies above must finish before the peer may overwrite the slots.
        if n > 0 { inCons.store(cons &+ UInt32(n), ordering: .releasing) }
        return n
    }

    /// `write` from `bytes[offset...]`.
    public func write(_ bytes: [UInt8], from offset: Int = 0) throws(XenStoreError) -> Int {
        var result: Result<Int, XenStoreError> = .success(0)
        bytes.withUnsafeBytes { b in
            do throws(XenStoreError) {
                result = .success(try write(UnsafeRawBufferPointer(rebasing: b[offset...])))
            } catch {
                result = .failure(error)
            }
        }
        return try result.get()
    }

    /// Reads up to `count` bytes into a new array.
    public func read(upTo count: Int) throws(XenStoreError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var result: Result<Int, XenStoreError> = .success(0)
        out.withUnsafeMutableBytes { b in
            do throws(XenStoreError) {
                result = .success(try read(into: b))
            } catch {
                result = .failure(error)
            }
        }
        out.removeLast(count - (try result.get()))
        return out
    }

    /// Bytes waiting to be read (0 for a bad index; `read` reports that).
    public var readable: Int {
        let avail = inProd.load(ordering: .acquiring) &- inCons.load(ordering: .relaxed)
        return avail <= UInt32(Self.size) ? Int(avail) : 0
    }

    /// The `error` field (`XENSTORE_ERROR_*`).
    public var error: UInt32 { index(Self.errorOffset).load(ordering: .acquiring) }
}
