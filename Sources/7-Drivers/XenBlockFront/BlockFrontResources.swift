import CXen
import Foundation
import XenABI
import XenBlockProtocol
import XenHypervisor
import XenRing

/// What one frontend queue shares with the backend, set up once per connection: the
/// ring pages, a pool of data pages and one indirect-segment page per ring slot, all
/// granted once (the grants are reused for every request, which is what
/// `feature-persistent` promises the backend), and an unbound event channel.
public struct BlockFrontQueueResources: Sendable {
    /// The backend domain every grant and the event channel are offered to.
    public let backend: DomainID
    /// The ring, initialised (`SHARED_RING_INIT`) before its grants were published.
    public let ring: SharedPages
    /// Data pages: requests take pages from here; the backend maps them (`feature-persistent`)
    /// or grant-copies into and out of them.
    public let pool: SharedPages
    /// One page per ring slot for indirect segment lists (granted read-only).
    public let indirect: SharedPages
    /// The event channel handle the port was allocated on; the queue polls it.
    public let events: any EventChannels
    /// The local port, unbound until the backend binds to it.
    public let port: EventPort

    /// Shares a ring of `1 << ringPageOrder` pages and `poolPages` data pages with
    /// `backend`, initialises the ring and allocates the event channel.
    public static func allocate(hypervisor: any Hypervisor, sharer: any GrantSharer, backend: DomainID,
                                ringPageOrder: Int = 0, poolPages: Int = 512) throws -> BlockFrontQueueResources {
        let events = try hypervisor.openEventChannels()
        var shared: [SharedPages] = []
        do {
            let ring = try sharer.sharePages(count: 1 << ringPageOrder, with: backend, writable: true)
            shared.append(ring)
            _ = try FrontRing<blkif_request, blkif_response>(initializing: ring.memory)
            let size = Int(try RingGeometry(request: blkif_request.self, response: blkif_response.self,
                                            pageCount: 1 << ringPageOrder).entryCount)
            let pool = try sharer.sharePages(count: poolPages, with: backend, writable: true)
            shared.append(pool)
            let indirect = try sharer.sharePages(count: size, with: backend, writable: false)
            shared.append(indirect)
            let port = try events.bindUnbound(remote: backend)
            return BlockFrontQueueResources(backend: backend, ring: ring, pool: pool, indirect: indirect,
                                            events: events, port: port)
        } catch {
            for pages in shared { try? sharer.unshare(pages) }
            events.close()
            throw error
        }
    }

    /// Unbinds the port and ends the grants. A grant the backend still maps is retried
    /// for up to `timeout` seconds (a backend unmaps before it says Closed); returns
    /// false if some pages could not be unshared.
    @discardableResult
    public func release(sharer: any GrantSharer, timeout: Double = 5) -> Bool {
        try? events.unbind(port)
        events.close()
        let deadline = Date().addingTimeInterval(timeout)
        var all = true
        for pages in [ring, pool, indirect] {
            while true {
                do {
                    try sharer.unshare(pages)
                    break
                } catch where error.code == .busy && Date() < deadline {
                    usleep(1000)
                } catch {
                    all = false
                    break
                }
            }
        }
        return all
    }
}

extension BlockFrontQueueResources {
    /// The same ring, pool and indirect pages granted to the backend again under new
    /// references, the ring initialised afresh, and a new port: the connection after a
    /// resumed suspend, whose references and port went with the old copy
    /// (`GrantSharer.shareAgain`). On a throw nothing stays shared and the old pages are
    /// forgotten.
    public func sharedAgain(hypervisor: any Hypervisor, sharer: any GrantSharer) throws -> BlockFrontQueueResources {
        events.close()
        var shared: [SharedPages] = []
        // Not yet granted again, the one being granted included: forgotten on a throw.
        var left = [ring, pool, indirect][...]
        do {
            let events = try hypervisor.openEventChannels()
            do {
                while let pages = left.first {
                    shared.append(try sharer.shareAgain(pages))
                    left.removeFirst()
                }
                _ = try FrontRing<blkif_request, blkif_response>(initializing: shared[0].memory)
                let port = try events.bindUnbound(remote: backend)
                return BlockFrontQueueResources(backend: backend, ring: shared[0], pool: shared[1], indirect: shared[2],
                                                events: events, port: port)
            } catch {
                events.close()
                throw error
            }
        } catch {
            for pages in shared { try? sharer.unshare(pages) }
            for pages in left { sharer.forget(pages) }
            throw error
        }
    }

    /// Lets go of what a resumed suspend took away (see `SuspendOutcome.resumed`): the
    /// port and the grants are gone with the old copy, so nothing is unbound or ended;
    /// the pages are freed and the event-channel handle closed.
    public func forget(sharer: any GrantSharer) {
        for pages in [ring, pool, indirect] { sharer.forget(pages) }
        events.close()
    }
}

/// What the backend advertised, as the frontend uses it.
public struct BlockDeviceInfo: Hashable, Sendable {
    /// Device size in 512-byte sectors (`sectors`).
    public var sectors: UInt64
    /// `sector-size`.
    public var sectorSize: UInt32
    /// The device is read-only (`VDISK_READONLY` in `info`, or `mode` "r"): writes and
    /// discards fail with ``BlockFrontError/Code/readOnly``.
    public var readOnly: Bool
    /// The backend offers `feature-flush-cache` (`BLKIF_OP_FLUSH_DISKCACHE`).
    public var flush: Bool
    /// The backend offers `feature-barrier` (`BLKIF_OP_WRITE_BARRIER`).
    public var barrier: Bool
    /// The backend offers `feature-discard` (`BLKIF_OP_DISCARD`).
    public var discard: Bool
    /// `feature-max-indirect-segments` (0: none).
    public var maxIndirectSegments: Int

    /// Describes a device of `sectors` sectors of `sectorSize` bytes with the given features.
    public init(sectors: UInt64, sectorSize: UInt32 = 512, readOnly: Bool = false, flush: Bool = true,
                barrier: Bool = false, discard: Bool = false, maxIndirectSegments: Int = 0) {
        self.sectors = sectors
        self.sectorSize = sectorSize
        self.readOnly = readOnly
        self.flush = flush
        self.barrier = barrier
        self.discard = discard
        self.maxIndirectSegments = maxIndirectSegments
    }

    /// Bytes on the device.
    public var byteCount: UInt64 { sectors &* UInt64(sectorSize) }
}
