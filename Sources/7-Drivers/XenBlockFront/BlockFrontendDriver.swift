import CXen
import Logging
import XenABI
import XenBlockProtocol
import XenBus
import XenHypervisor
import XenLocks
import XenStore

/// What a frontend asks for, bounded by what the backend offers.
public struct BlockFrontendOptions: Sendable {
    /// Rings wanted (`multi-queue-num-queues`, at most the backend's `multi-queue-max-queues`).
    public var queues: Int = 1
    /// `ring-page-order` wanted (at most the backend's `max-ring-page-order`).
    public var ringPageOrder: Int = 0
    /// Data pages shared per queue.
    public var poolPages: Int = 512
    /// Use indirect requests when the backend offers them.
    public var indirect: Bool = true
    /// Announce `feature-persistent`: our grants are shared once and reused. Off, the
    /// key says "0" (the data path is the same; a mapping backend would not cache them).
    public var persistent: Bool = true
    /// Asks for `queues` rings of `1 << ringPageOrder` pages, each with `poolPages` data pages.
    public init(queues: Int = 1, ringPageOrder: Int = 0, poolPages: Int = 512, indirect: Bool = true,
                persistent: Bool = true) {
        self.queues = queues
        self.ringPageOrder = ringPageOrder
        self.poolPages = poolPages
        self.indirect = indirect
        self.persistent = persistent
    }
}

/// The frontend half of one vbd as a XenBus driver around a ``BlockFrontend``: shares
/// rings and pools and writes the ring keys in `prepare`, reads the backend's disk and
/// features and attaches the frontend in `connect`, and in `disconnect` detaches (keeping
/// unanswered requests for the next connection) and ends its grants.
public final class BlockFrontendDriver: XenbusDeviceDriver, @unchecked Sendable {
    // @unchecked: `resources` is guarded by its lock; the rest is immutable.
    /// The vbd this driver runs.
    public let device: XenbusDevice
    /// The device callers read and write; it outlives connections.
    public let frontend: BlockFrontend
    private let store: any XenStoreConnection
    private let hypervisor: any Hypervisor
    private let sharer: any GrantSharer
    private let options: BlockFrontendOptions
    private let resources = Locked<[BlockFrontQueueResources]>([])
    /// What the connection before a resumed suspend shared: granted again by the next
    /// `prepare` when the destination's backend takes the same rings.
    private let beforeResume = Locked<[BlockFrontQueueResources]>([])
    /// The disk's size before a resume: the destination's must match.
    private let sectorsBeforeResume = Locked<UInt64?>(nil)

    /// Creates the driver of `device` around `frontend`; the handshake calls ``prepare()``,
    /// ``connect()`` and ``disconnect()``.
    public init(device: XenbusDevice, store: any XenStoreConnection, hypervisor: any Hypervisor, sharer: any GrantSharer,
                frontend: BlockFrontend = BlockFrontend(), options: BlockFrontendOptions = BlockFrontendOptions()) {
        self.device = device
        self.store = store
        self.hypervisor = hypervisor
        self.sharer = sharer
        self.frontend = frontend
        self.options = options
    }

    /// What the current connection shares (rings, pools, ports), for diagnostics and tests.
    public var sharedResources: [BlockFrontQueueResources] { resources.withLock { $0 } }

    /// Reads the backend's `multi-queue-max-queues` and `max-ring-page-order`, shares each
    /// queue's ring, pool and indirect pages, allocates its event channel, and returns the
    /// writes of `ring-ref` (or `ring-ref<N>`), `event-channel`, `ring-page-order`,
    /// `multi-queue-num-queues`, `protocol` and `feature-persistent`. On a throw nothing
    /// stays shared.
    /// - Throws: `XenstoreValueError` for a malformed backend key, `XenStoreError` when it
    ///   cannot be read, and the hypervisor's errors when pages cannot be shared or a port
    ///   allocated.
    public func prepare() async throws -> XenbusWrites {
        let be = device.backendPath
        // blkif.h declares both uint32_t; we take the smaller of theirs and ours.
        // Both reads in flight at once: each is a round trip to xenstored, and after a
        // resume every one of them is part of the guest's downtime.
        async let queuesOffered = store.readNumber(be, XenbusKey.multiQueueMaxQueues, in: 1...UInt32.max, default: 1)
        async let orderOffered = store.readNumber(be, XenbusKey.maxRingPageOrder, in: 0...UInt32.max, default: 0)
        let maxQueues = Int(try await queuesOffered)
        let maxOrder = Int(try await orderOffered)
        let queues = max(1, min(options.queues, maxQueues))
        let order = max(0, min(options.ringPageOrder, maxOrder))
        // After a resumed suspend, the same pages granted anew when the backend takes as
        // many rings of the same size: no new pages to fault in and zero while the guest is down.
        var kept = beforeResume.withLock { k in defer { k = [] }; return k }
        if kept.count != queues || kept.contains(where: { $0.ring.refs.count != 1 << order || $0.backend != device.backendDomain }) {
            for r in kept { r.forget(sharer: sharer) }
            kept = []
        }
        // Sharing pages and allocating ports are daemon round trips that block: on a thread
        // of their own, so that the guest's other tasks (the other devices' handshakes after
        // a resume, the transaction that will say Initialised) go on meanwhile on the pool.
        let (hypervisor, sharer, backend, poolPages) = (self.hypervisor, self.sharer, device.backendDomain, options.poolPages)
        let made = try await onOwnThread(named: "blkfront-prepare") { [kept] () throws -> [BlockFrontQueueResources] in
            var made: [BlockFrontQueueResources] = []
            var unused = kept[...]
            do {
                for _ in 0..<queues {
                    if let r = unused.popFirst() {
                        made.append(try r.sharedAgain(hypervisor: hypervisor, sharer: sharer))
                    } else {
                        made.append(try BlockFrontQueueResources.allocate(
                            hypervisor: hypervisor, sharer: sharer, backend: backend, ringPageOrder: order, poolPages: poolPages))
                    }
                }
            } catch {
                for r in unused { r.forget(sharer: sharer) }
                for r in made { r.release(sharer: sharer, timeout: 0) }
                throw error
            }
            return made
        }
        var entries: [(String, String)] = []
        let fe = device.frontendPath
        for (q, r) in made.enumerated() {
            let dir = queues == 1 ? fe : "\(fe)/queue-\(q)"
            if order == 0 {
                entries.append((dir + "/" + XenbusKey.ringRef, String(r.ring.refs[0].rawValue)))
            } else {
                for (i, ref) in r.ring.refs.enumerated() { entries.append(("\(dir)/ring-ref\(i)", String(ref.rawValue))) }
            }
            entries.append((dir + "/" + XenbusKey.eventChannel, String(r.port.rawValue)))
        }
        if order > 0 { entries.append((fe + "/" + XenbusKey.ringPageOrder, String(order))) }
        if queues > 1 { entries.append((fe + "/" + XenbusKey.multiQueueNumQueues, String(queues))) }
        entries.append((fe + "/" + XenbusKey.protocolName, BlkifABI.native.protocolName))
        // Our grants are shared once and reused for every request.
        entries.append((fe + "/" + XenbusKey.featurePersistent, options.persistent ? "1" : "0"))
        resources.withLock { $0 = made }
        return .entries(entries)
    }

    /// Reads the backend's `sectors`, `sector-size`, `info`, `mode`,
    /// `feature-max-indirect-segments`, `feature-flush-cache`, `feature-barrier` and
    /// `feature-discard`, and attaches the frontend, which re-issues first whatever the last
    /// connection left unanswered.
    /// - Throws: `XenstoreValueError` for a missing or malformed key,
    ///   ``BlockFrontError`` `.notSupported` for a `sector-size` other than 512, `RingError`
    ///   when a ring cannot be attached.
    public func connect() async throws {
        let be = device.backendPath
        // Every read in flight at once (a round trip each, part of the downtime after a
        // resume), awaited in the order they are checked, so a bad key is reported as before.
        // The byte size (sectors * 512) must fit in 64 bits.
        async let sectorsRead = store.readNumber(be, XenbusKey.sectors, in: 0...(UInt64.max / 512))
        async let sectorSizeRead = store.readNumber(be, XenbusKey.sectorSize, in: 1...UInt32.max, default: 512)
        async let infoRead = store.readNumber(be, XenbusKey.info, in: 0...UInt32.max, default: 0)
        async let modeRead = store.readChoice(be, XenbusKey.mode, among: ["r", "w"], default: "w")
        async let indirectRead = store.readNumber(be, XenbusKey.featureMaxIndirectSegments, in: 0...UInt32.max, default: 0)
        async let flushRead = store.readFeature(be, XenbusKey.featureFlushCache)
        async let barrierRead = store.readFeature(be, XenbusKey.featureBarrier)
        async let discardRead = store.readFeature(be, XenbusKey.featureDiscard)
        let sectors = try await sectorsRead
        let sectorSize = try await sectorSizeRead
        guard sectorSize == 512 else { throw BlockFrontError(.notSupported, "sector-size \(sectorSize) (only 512 is served)") }
        if let before = sectorsBeforeResume.withLock({ $0 }), before != sectors {
            // Not the disk the requests were made for: fail them rather than write elsewhere.
            let error = BlockFrontError(.changed, "the disk has \(sectors) sectors after the resume, \(before) before")
            frontend.fail(error)
            throw error
        }
        sectorsBeforeResume.withLock { $0 = nil }
        let infoBits = try await infoRead
        let mode = try await modeRead
        // Read either way (it is in flight already); a bad value matters only when used.
        let indirect: Int
        do {
            let offered = try await indirectRead
            indirect = options.indirect ? Int(offered) : 0
        } catch {
            guard !options.indirect else { throw error }
            indirect = 0
        }
        let info = BlockDeviceInfo(
            sectors: sectors, sectorSize: 512,
            readOnly: infoBits & UInt32(VDISK_READONLY) != 0 || mode == "r",
            flush: try await flushRead,
            barrier: try await barrierRead,
            discard: try await discardRead,
            maxIndirectSegments: min(indirect, BlockDeviceLimits.maxIndirectSegmentsLimit))
        try frontend.attach(resources.withLock { $0 }, info: info)
    }

    /// Detaches the frontend (keeping unanswered requests for the next connection), then
    /// unbinds the ports and ends the grants, waiting up to 5 s for the backend to unmap them.
    public func disconnect() async {
        let made = resources.withLock { r in defer { r = [] }; return r }
        for r in beforeResume.withLock({ k in defer { k = [] }; return k }) { r.forget(sharer: sharer) }
        let frontend = self.frontend, sharer = self.sharer
        await frontend.detached()
        // Unsharing retries (sleeps) while the backend still maps: off the pool.
        await onOwnThread(named: "blkfront-release") { for r in made { r.release(sharer: sharer) } }
    }
}

extension BlockFrontendDriver: XenbusSuspendableDriver {
    /// Stops issuing at a safe point (``BlockFrontend/quiesce(timeout:)``); requests in
    /// flight stay on the ring and calls wait.
    public func quiesce() async {
        await frontend.quiesce()
    }

    /// `.cancelled`: issues again on the same rings (Linux's `blkfront_resume_cancelled`
    /// would do nothing more). `.resumed`: stops the queue threads, keeping every request
    /// with no response to issue once more, and forgets the rings, pools and ports without
    /// ending or unbinding them (Linux's `blkfront_resume` then `blkif_recover`); the
    /// handshake that follows shares new ones, reads the destination's features afresh and
    /// re-issues the kept requests first. A destination disk of another size fails the
    /// waiting calls with ``BlockFrontError/Code/changed`` and closes the device.
    public func resume(_ outcome: SuspendOutcome) async {
        switch outcome {
        case .cancelled:
            frontend.unquiesce()
        case .resumed:
            let old = resources.withLock { r in defer { r = [] }; return r }
            await frontend.detached()
            sectorsBeforeResume.withLock { $0 = frontend.info?.sectors }
            // Kept for the next `prepare` to grant again (or forget, if the new backend differs).
            let stale = beforeResume.withLock { k in defer { k = old }; return k }
            for r in stale { r.forget(sharer: sharer) }
        }
    }
}
