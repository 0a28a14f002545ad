import Foundation
import Glibc
import Logging
import TestSupport
import XenBlockFront
import XenBus
import XenEmbeddedHost
import XenHypervisor
import XenNetBack
import XenSimulator

/// A guest's vbd on a real image file through an embedded host (simulated hypervisor,
/// xenstored, blkback), connected, with its `BlockFrontend`: the disk the NBD export and
/// the FUSE file are tested on.
public final class PVDisk: @unchecked Sendable {
    // @unchecked: set up once, then only read; `close()` is called once.
    public let directory: TemporaryDirectory
    public let image: String
    public let host: EmbeddedHost
    public let frontend: BlockFrontend
    private let endpoint: XenbusEndpoint
    private let task: Task<Void, Error>
    private let vbd: XenbusDevice
    /// The vbd's backend directory, where blkback advertises what it offers.
    public var backendPath: String { vbd.backendPath }
    private let sharer: any GrantSharer

    /// `params`: the vbd's target when not the image itself (an NBD URI serving it).
    public static func make(bytes: Int, readOnly: Bool = false,
                            params: ((String) async throws -> String)? = nil) async throws -> PVDisk {
        let dir = try TemporaryDirectory(prefix: "xenpv-pvdisk")
        let image = dir.path("disk.img")
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(bytes)) == 0 else {
            throw TimedOut(seconds: 0)
        }
        var logger = Logger(label: "pvdisk-test")
        logger.logLevel = .warning
        let host = try EmbeddedHost(directory: URL(fileURLWithPath: dir.path), logger: logger) { _, _ in EchoAttachment.make() }
        try await host.startBlockBackend()
        let guest = try await host.createGuest(frames: 4096)
        let guestStore = try host.store(for: guest.domainID)
        let vbd = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
        let target = try await params?(image) ?? image
        try await XenbusToolstack.create(vbd, on: host.store,
                                         backendKeys: ["params": target, "mode": readOnly ? "r" : "w", "type": "file"])
        let sharer = try guest.openGrantSharer()
        let driver = BlockFrontendDriver(device: vbd, store: guestStore, hypervisor: guest, sharer: sharer)
        let endpoint = XenbusEndpoint(role: .frontend, store: guestStore, path: vbd.frontendPath, peerPath: vbd.backendPath,
                                      driver: driver, logger: logger)
        let task = Task { try await endpoint.run() }
        try await endpoint.connected(timeout: .seconds(120))
        return PVDisk(directory: dir, image: image, host: host, frontend: driver.frontend, endpoint: endpoint, task: task,
                      vbd: vbd, sharer: sharer)
    }

    private init(directory: TemporaryDirectory, image: String, host: EmbeddedHost, frontend: BlockFrontend,
                 endpoint: XenbusEndpoint, task: Task<Void, Error>, vbd: XenbusDevice, sharer: any GrantSharer) {
        self.directory = directory
        self.image = image
        self.host = host
        self.frontend = frontend
        self.endpoint = endpoint
        self.task = task
        self.vbd = vbd
        self.sharer = sharer
    }

    /// Unplugs the vbd and stops the host; the hypervisor's leftovers.
    public func close() async throws -> Leftovers {
        endpoint.requestClose()
        try await task.value
        try await XenbusToolstack.remove(vbd, on: host.store)
        sharer.close()
        let leftovers = await host.shutdown()
        directory.remove()
        return leftovers
    }
}
