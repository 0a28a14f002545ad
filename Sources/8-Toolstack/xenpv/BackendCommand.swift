import ArgumentParser
import Foundation
import Logging
import NBDProtocol
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenLocks
import XenNetBack
import XenSimulatorClient
import XenToolstack
import XenWorld

/// `xenpv backend --connect PATH [--disk IMAGE] [--nic BRIDGE]`: a dom0 process
/// serving the guests' devices.
struct BackendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backend",
        abstract: "Join the hypervisor as dom0 and serve every guest's vif and vbd.",
        discussion: """
            Each vbd is served from the `params` in its backend directory (as `xenpv create` writes it: an
            absolute path to an image file or block device, read-only when `mode` has no w); a vbd without
            `params` (a guest's xvda plugged by the daemon) is served from --disk IMAGE, which such guests
            share. A vbd whose target is unusable stays down with the reason in its `error` key. Disks go
            through io_uring (or libaio: --engine, and where the kernel refuses io_uring or the image is on tmpfs),
            with O_DIRECT (or through the host's page cache: --cache writeback, or cache=writeback in the disk spec).
            Each vif whose backend directory names a `script` (as `xenpv create` and `network-attach` write it)
            is set up as Xen's hotplug scripts do: vif-bridge puts TAP vifD.N on its `bridge` (else --nic's),
            vif-route routes its `ip` to vifD.N with proxy ARP, vif-nat gives it a private /30 and masquerades
            what leaves it; a bad value fails only that vif, with the reason in its `error` key.
            A vif without `script` (plugged by the daemon): with --nic BRIDGE a TAP vifD.N on that bridge;
            without, it echoes the frames its guest sends back to it (for `xenpv guest net-echo`).
            """)

    @Option(help: "The hypervisor daemon's socket (the simulated world).")
    var connect: String?

    @Option(help: "simulated (join --connect), xen (Xen's own libraries, as dom0), or auto: xen where /dev/xen/evtchn exists.")
    var hypervisor = World.auto

    @Option(help: "Disk image for the guests' vbd (a file or block device), or an NBD export's URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH).")
    var disk: String?

    @Option(help: "The storage engine for --disk: io_uring or libaio (default: io_uring where the kernel allows it).")
    var engine: FileEngineKind?

    @Option(help: "Whether image files and block devices go through the host's page cache: none (O_DIRECT) or writeback; a disk spec's cache= wins (default: none; an NBD export's cache is its server's).")
    var cache: DiskCache?

    @Option(help: "Linux bridge for the guests' vifs (default: echo frames back).")
    var nic: String?

    @Flag(help: "Log the handshakes.")
    var verbose = false

    mutating func validate() throws {
        // Made absolute here: the vbd's disk is opened (and checked again, as `params`
        // is, by `DiskTarget`, which takes absolute paths only) long after the parse.
        if let path = disk, !NBDURI.looksLikeURI(path), !path.hasPrefix("/") {
            disk = FileManager.default.currentDirectoryPath + "/" + path
        }
        if let disk, NBDURI.looksLikeURI(disk) {
            // An NBD export (BackendDisk serves it through NBDStorage): its URI must parse.
            do { _ = try NBDURI(parsing: disk) } catch { throw ValidationError("--disk \(disk): \(error)") }
        } else if let disk {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: disk, isDirectory: &isDir) else {
                throw ValidationError("no disk image at \(disk)")
            }
            guard !isDir.boolValue else { throw ValidationError("\(disk) is a directory, not a disk image") }
            let size = (try? FileManager.default.attributesOfItem(atPath: disk)[.size] as? UInt64) ?? 0
            guard size >= 4096, size % 512 == 0 else {
                throw ValidationError("disk image \(disk) has a bad size: \(size) bytes (needs a positive multiple of 512, at least 4096)")
            }
        }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: verbose)
        ProcessSupport.blockTerminationSignals()
        let hv = try JoinedDomain.join(hypervisor, connect: connect, as: .backend)
        let bridge = nic
        // Each vif as its backend directory's `script` says (as Xen's hotplug scripts);
        // one without (plugged by the daemon) on --nic's bridge, else echoing.
        let attach = VifHotplug.factory(store: hv.store, backend: hv.domainID, defaultBridge: bridge) { id, features in
            if let bridge {
                return try TapAttachment(name: id.interfaceName, bridge: bridge, offloads: features.tapOffloads,
                                         queues: features.queues)
            }
            return EchoAttachment.make(swapAddresses: false, queues: features.queues)
        }
        let backend = NetBackend(hypervisor: hv, store: hv.store, logger: logger, attach: attach)
        let task = Task { try await backend.run() }
        let fallback = disk
        let engine = self.engine, cache = self.cache
        let blk = BlockBackend(store: hv.store, hypervisor: hv, logger: logger) { _, dir, store in
            try await BackendDisk.open(directory: dir, store: store, fallback: fallback, engine: engine, cache: cache,
                                       logger: logger)
        }
        try ProcessSupport.runBlocking { try await blk.start() }
        let blockBackend: BlockBackend? = blk
        say("xenpv backend: dom0 (\(hv.world)) serving vifs (\(bridge.map { "bridge \($0)" } ?? "echo"))"
            + " and vbds (their params" + (disk.map { ", else \($0)" } ?? "") + "; "
            + (engine.map(\.description) ?? "engine per disk") + (cache.map { ", cache=\($0.rawValue)" } ?? "") + ")")
        // One line whenever the set of served vifs changes, for people and tests.
        startDetachedThread(named: "vif-watch") {
            var last = ""
            while true {
                let now = backend.vifs.map { "\($0.identity) \($0.state)" }.joined(separator: ", ")
                if now != last {
                    say("xenpv backend: vifs: \(now.isEmpty ? "none" : now)")
                    last = now
                }
                usleep(100_000)
            }
        }
        ProcessSupport.waitForTermination()
        backend.closeAll()
        if let blk = blockBackend { _ = try? ProcessSupport.runBlocking { await blk.shutdown() } }
        task.cancel()
        hv.close()
        say("xenpv backend: stopped")
    }
}

