import CXen
import Glibc
import XenABI
import XenHypervisor
import XenSimulator

/// The cost per 4 KiB segment of the ways a backend can reach a guest's data page, on
/// the simulator: a grant copy into a private buffer, a map + copy + unmap per request,
/// and a persistent mapping (mapped once, then only copied into the aligned buffer
/// `O_DIRECT` needs). Behind the choice documented on `BlockQueue`.
public enum GrantPathMeasurement {
    /// Nanoseconds per 4 KiB segment for each path.
    public struct Result: Sendable, CustomStringConvertible {
        /// A grant copy of one segment per call, in ns.
        public var grantCopy: Double
        /// A grant copy of 11 segments per call (a full direct request), per segment, in ns.
        public var grantCopyBatchOf11: Double
        /// Map, copy into an aligned buffer, unmap, per segment, in ns.
        public var mapCopyUnmap: Double
        /// A copy from a page mapped once beforehand into an aligned buffer, per segment, in ns.
        public var persistentMapCopy: Double
        /// One line with the four costs.
        public var description: String {
            func f(_ v: Double) -> String { String(format: "%.0f ns", v) }
            return "per 4 KiB segment: grant copy \(f(grantCopy)) (batches of 11: \(f(grantCopyBatchOf11))), "
                + "map+copy+unmap \(f(mapCopyUnmap)), persistent map + copy \(f(persistentMapCopy))"
        }
    }

    /// Measures each path `iterations` times between a guest and dom0 of a fresh simulator and returns the mean costs; throws if set-up or a grant operation fails.
    public static func run(iterations: Int = 20_000) throws -> Result {
        let hv = SimulatedHypervisor()
        let guest = try hv.createDomain(frames: 256)
        let sharer = try guest.openGrantSharer()
        let mapper = try hv.dom0.openGrantMapper()
        let pages = try sharer.sharePages(count: 64, with: .dom0, writable: true)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 11 * XenPage.size, alignment: XenPage.size)
        defer {
            buffer.deallocate()
            try? sharer.unshare(pages)
            mapper.close()
            sharer.close()
            _ = hv.shutdown()
        }
        let segments = UnsafeMutableBufferPointer<GrantCopySegment>.allocate(capacity: 11)
        defer { segments.deallocate() }

        func time(_ n: Int, _ body: (Int) throws -> Void) rethrows -> Double {
            let t0 = cxen_monotonic_ns()
            for i in 0..<n { try body(i) }
            return Double(cxen_monotonic_ns() - t0) / Double(n)
        }
        // A segment that failed would look fast: each copy's statuses are checked.
        func checkStatuses(_ count: Int) throws {
            for k in 0..<count where segments[k].status != .okay {
                throw HypervisorError(.grant(segments[k].status), "grant copy segment \(k) failed during the measurement")
            }
        }
        let copy = try time(iterations) { i in
            segments[0] = GrantCopySegment(source: .foreign(domain: guest.domainID, ref: pages.refs[i & 63], offset: 0),
                                           destination: .local(buffer), length: UInt16(XenPage.size))
            try mapper.copy(UnsafeMutableBufferPointer(rebasing: segments[0..<1]))
            try checkStatuses(1)
        }
        let batch = try time(iterations / 11) { i in
            for k in 0..<11 {
                segments[k] = GrantCopySegment(source: .foreign(domain: guest.domainID, ref: pages.refs[(i + k) & 63], offset: 0),
                                               destination: .local(buffer + k * XenPage.size), length: UInt16(XenPage.size))
            }
            try mapper.copy(segments)
            try checkStatuses(11)
        } / 11
        let map = try time(iterations) { i in
            let m = try mapper.map(pages.refs[i & 63], from: guest.domainID, writable: true)
            buffer.copyMemory(from: m.memory.base, byteCount: XenPage.size)
            try mapper.unmap(m)
        }
        let persistent = try mapper.map(pages.refs, from: guest.domainID, writable: true)
        let mapped = time(iterations) { i in
            buffer.copyMemory(from: persistent.memory.page(i & 63), byteCount: XenPage.size)
        }
        try mapper.unmap(persistent)
        return Result(grantCopy: copy, grantCopyBatchOf11: batch, mapCopyUnmap: map, persistentMapCopy: mapped)
    }
}
