import ArgumentParser
import Foundation
import Logging
import XenABI
import XenBlockExport
import XenBlockFront
import XenBlockFUSE
import XenBus
import XenLocks
import XenNetFront
import XenSimulatorClient
import XenStore
import XenToolstack
import XenWorld

/// `xenpv guest …`: a guest process; each run joins as a new domU with the
/// device it needs (a vif or a vbd), does one job, and leaves (its domain goes with it).
struct GuestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "Run a guest domain that uses its devices.",
        subcommands: [GuestNetEcho.self, GuestNetSend.self, GuestNetReceive.self, GuestNetTap.self, GuestDisk.self, GuestMemory.self])
}

struct GuestOptions: ParsableArguments {
    @Option(help: "The hypervisor daemon's socket (the simulated world).")
    var connect: String?

    @Option(help: "simulated (join --connect as a new guest), xen (Xen's own libraries in this domU), or auto: xen where /dev/xen/evtchn exists.")
    var hypervisor = World.auto

    @Option(help: "The guest's memory in 4 KiB frames.")
    var frames = 4096

    @Option(help: ArgumentHelp("Join the domain `xenpv domain create` made for this token (also XENPV_DOMAIN_TOKEN) instead of creating one; how a user the daemon does not trust runs a guest.", valueName: "HEX"))
    var token: String?

    /// The join this guest asks for: its token's domain, or a new one with `devices`.
    func request(devices: GuestDevices) throws -> DomainRequest {
        guard let text = token ?? ProcessInfo.processInfo.environment["XENPV_DOMAIN_TOKEN"] else {
            return .newGuest(frames: frames, devices: devices)
        }
        guard let t = DomainToken(text) else { throw ValidationError("a domain token is 32 hex digits, not \(text.debugDescription)") }
        return .guest(token: t)
    }

    @Option(help: "Seconds to wait for the backend to connect.")
    var connectTimeout = 10.0

    @Flag(help: "After the job, keep running until the toolstack asks for a shutdown (control/shutdown).")
    var untilShutdown = false

    @Flag(help: ArgumentHelp("Do not watch control/shutdown, as a guest kernel without the PV control driver.", visibility: .hidden))
    var noControl = false

    @Flag(help: "Log the handshake.")
    var verbose = false

    func validate() throws {
        guard frames >= 16, frames <= 262_144 else { throw ValidationError("--frames must be 16 to 262144, not \(frames)") }
        guard connectTimeout > 0 else { throw ValidationError("--connect-timeout must be positive") }
        if let connect, !FileManager.default.fileExists(atPath: connect) {
            throw ValidationError("no hypervisor socket at \(connect) (start `xenpv hypervisor --socket \(connect)`)")
        }
        if hypervisor.resolved == .simulated, connect == nil, ProcessInfo.processInfo.environment[JoinedDomain.socketVariable] == nil {
            throw ValidationError("--connect PATH is needed for the simulated world (a `xenpv hypervisor --socket PATH`)")
        }
    }
}

/// A guest with its netfront connected.
final class GuestNet: @unchecked Sendable {
    // @unchecked: immutable after init, apart from `received`, a Mutex.
    let hv: JoinedDomain
    let port = PacketPort()
    let endpoint: XenbusEndpoint
    let received = Inbox()
    let shutdown: ShutdownWatch
    /// Whether ``close()`` leaves the domain (this netfront's own join) or only the vif.
    private let ownsDomain: Bool
    private var tasks: [Task<Void, Never>] = []

    /// Joins as a new guest with a vif and connects its netfront.
    convenience init(_ options: GuestOptions, logger: Logger) throws {
        let hv = try JoinedDomain.join(options.hypervisor, connect: options.connect, as: options.request(devices: [.vif]))
        say("xenpv guest: joined as \(hv.domainID)")
        try self.init(hv, shutdown: ShutdownWatch(hv, enabled: !options.noControl), options: options, ownsDomain: true, logger: logger)
    }

    /// Connects the netfront of vif 0 of a domain the command has joined, its endpoint
    /// added to `shutdown`'s suspender so it suspends and resumes with the domain.
    /// Unless `ownsDomain`, ``close()`` leaves `hv` and `shutdown` to the command.
    init(_ hv: JoinedDomain, shutdown: ShutdownWatch, options: GuestOptions, ownsDomain: Bool = false, logger: Logger) throws {
        self.hv = hv
        self.shutdown = shutdown
        self.ownsDomain = ownsDomain
        let device = XenbusDevice(type: "vif", id: 0, frontend: hv.domainID)
        let frontend = NetFrontendDriver(hypervisor: hv, store: hv.store, path: device.frontendPath, port: port, logger: logger)
        endpoint = XenbusEndpoint(role: .frontend, store: hv.store, path: device.frontendPath, peerPath: device.backendPath,
                                  driver: frontend, logger: logger)
        let endpoint = self.endpoint
        tasks.append(Task { try? await endpoint.run() })
        shutdown.suspender?.add(endpoint)
        let port = self.port
        let received = self.received
        tasks.append(Task {
            for await packet in port.packets { received.append(packet.bytes) }
        })
        let handshake = Duration.seconds(options.connectTimeout)
        do { try ProcessSupport.runBlocking { try await endpoint.connected(timeout: handshake) } } catch {
            throw ValidationError("the vif's backend did not connect in \(options.connectTimeout) s (is `xenpv backend --connect \(options.connect ?? "PATH")` running?)")
        }
        say("xenpv guest: vif connected")
        // One line per handshake state change, so a person sees a backend restart.
        tasks.append(Task { [endpoint] in
            var last = XenbusState.connected
            for await now in endpoint.states() where now != last {
                say("xenpv guest: vif \(now)")
                last = now
            }
        })
    }

    /// With --until-shutdown, waits (this thread) for the toolstack's shutdown request.
    func lingerIfAsked(_ options: GuestOptions) {
        guard options.untilShutdown else { return }
        say("xenpv guest: waiting for a shutdown request")
        shutdown.wait()
    }

    /// Takes the frames received so far.
    func take() -> [[UInt8]] { received.take() }

    func send(_ frame: [UInt8]) throws {
        try ProcessSupport.runBlocking { [port] in try await port.send(frame) }
    }

    func close() {
        for t in tasks { t.cancel() }
        guard ownsDomain else {
            shutdown.suspender?.remove(endpoint)
            return
        }
        shutdown.cancel()
        hv.close()
    }


    /// Frame `seq` of `size` bytes: broadcast destination, a locally administered
    /// source, the local experimental EtherType 0x88B5, the sequence number, a pattern.
    static func frame(_ seq: UInt32, size: Int) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: size)
        for i in 0..<6 { f[i] = 0xFF }
        f[6] = 0x02; f[7] = 0x58; f[8] = 0x50; f[9] = 0x56
        f[12] = 0x88; f[13] = 0xB5
        withUnsafeBytes(of: seq.bigEndian) { for (i, b) in $0.enumerated() { f[14 + i] = b } }
        for i in 18..<size { f[i] = UInt8(truncatingIfNeeded: i &* 31 &+ Int(seq)) }
        return f
    }
}

/// Frames received, waiting to be taken. (An NSLock, a pthread mutex that
/// ThreadSanitizer understands.)
final class Inbox: @unchecked Sendable {
    // @unchecked: `frames` is guarded by `lock`.
    private let lock = NSLock()
    private var frames: [[UInt8]] = []

    func append(_ frame: [UInt8]) { lock.withLock { frames.append(frame) } }

    func take() -> [[UInt8]] {
        lock.withLock {
            defer { frames = [] }
            return frames
        }
    }
}

/// Sizes a netif frame can have here.
private func checkFrameSize(_ size: Int) throws {
    guard size >= 60, size <= 9000 else { throw ValidationError("--size must be 60 to 9000 bytes, not \(size)") }
}

/// `xenpv guest net-echo`: stop-and-wait through an echoing backend; every
/// frame must come back intact (resent if not answered in time), in order.
struct GuestNetEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net-echo", abstract: "Send frames and check each comes back intact (backend without --nic).")

    @OptionGroup var options: GuestOptions
    @Option(help: "Frames to send.") var count = 100
    @Option(help: "Bytes per frame.") var size = 1000
    @Option(help: "Milliseconds between frames.") var intervalMs = 0
    @Option(help: "Seconds the whole run may take.") var timeout = 30.0

    func validate() throws {
        try checkFrameSize(size)
        guard count > 0 else { throw ValidationError("--count must be positive") }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: options.verbose)
        let net = try GuestNet(options, logger: logger)
        defer { net.close() }
        let loop = EchoLoop(net: net, size: size, count: count, intervalMs: intervalMs, deadline: Date().addingTimeInterval(timeout),
                            logger: logger, progress: true) { net.shutdown.request != nil }
        let outcome = try loop.run()
        say("xenpv guest: \(outcome.echoed) frames echoed intact (\(outcome.resent) resent)")
        net.lingerIfAsked(options)
    }
}

/// `xenpv guest net-send`: sends frames onto the vif.
struct GuestNetSend: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-send", abstract: "Send frames on the vif.")

    @OptionGroup var options: GuestOptions
    @Option(help: "Frames to send.") var count = 10
    @Option(help: "Bytes per frame.") var size = 1000

    func validate() throws { try checkFrameSize(size) }

    func run() throws {
        let net = try GuestNet(options, logger: ProcessSupport.bootstrapLogging(verbose: options.verbose))
        defer { net.close() }
        for seq in 0..<UInt32(count) { try net.send(GuestNet.frame(seq, size: size)) }
        say("xenpv guest: sent \(count) frames of \(size) bytes")
        net.lingerIfAsked(options)
    }
}

/// `xenpv guest net-receive`: waits for frames on the vif.
struct GuestNetReceive: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "net-receive", abstract: "Receive frames on the vif.")

    @OptionGroup var options: GuestOptions
    @Option(help: "Frames to wait for.") var count = 1
    @Option(help: "Seconds to wait.") var timeout = 30.0

    func run() throws {
        let net = try GuestNet(options, logger: ProcessSupport.bootstrapLogging(verbose: options.verbose))
        defer { net.close() }
        let deadline = Date().addingTimeInterval(timeout)
        var got = 0
        while got < count, net.shutdown.request == nil {
            guard Date() < deadline else { throw ValidationError("received \(got) of \(count) frames in \(timeout) s") }
            for f in net.take() {
                got += 1
                say("frame \(got): \(f.count) bytes")
            }
            usleep(1000)
        }
        net.lingerIfAsked(options)
    }
}

/// `xenpv guest disk write|read|verify`: a range of each vbd named by --vdev (xvda by
/// default), served by `xenpv backend` (from its params, or --disk IMAGE). Data is a pattern of each byte's absolute
/// offset and a seed, so `verify` in a later guest checks what `write` wrote.
/// `xenpv guest disk serve --nbd ADDRESS` serves the whole vbd as an NBD export instead;
/// `xenpv guest disk mount DIR` shows it as one file, `DIR/xvda`, in a FUSE mount.
struct GuestDisk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk", abstract: "Write, read or verify a range of the vbd, serve it as an NBD export or mount it as a file.",
        discussion: """
            write prints "written N/M" after each acknowledged chunk (the backend has completed it);
            verify exits 1 at the first byte that differs from the pattern; write-verify does both in turn.
            --netns NAME also puts the domain's vif on a TAP in that network namespace for as long as the
            guest runs (see `xenpv guest net-tap`). --echo instead gives the domain a vif that, while the job
            runs, sends frames stop-and-wait through an echoing backend (`xenpv backend` without --nic) as
            `xenpv guest net-echo` does, and prints "N frames echoed intact (R resent)" at the end (a corrupted
            echo fails the job). --dirty-rate PAGES writes that many pages of the guest's own memory a second
            while the job runs, as `xenpv guest memory` does: checked across every suspend (save, restore,
            migration) and at the end. Both follow the domain through a migration with the vbd.
            serve --nbd unix:PATH|tcp:HOST:PORT serves the vbd to NBD clients (nbdinfo, qemu-io, qemu-img,
            nbdcopy, fio --ioengine=nbd) until SIGINT, SIGTERM or `xenpv shutdown`; it prints the URI to give them.
            mount DIR [--name xvda] shows the vbd as the file DIR/xvda in a FUSE mount (direct I/O; fsync flushes,
            fallocate --punch-hole discards) for losetup, dd, fio…, until SIGINT, SIGTERM, `xenpv shutdown` or `umount DIR`.
            """)

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case write, read, verify, serve, mount
        /// write, then read the range back and verify it.
        case writeVerify = "write-verify"
    }

    @OptionGroup var options: GuestOptions
    @OptionGroup(title: "The guest's NIC") var nic: GuestTapOptions
    @Argument(help: "write, read, verify, write-verify (write, then read back and verify), serve or mount.") var action: Action
    @Argument(help: "mount: the directory (existing, empty) the file appears in.") var directory: String?
    @Option(help: "mount: the file's name in the directory.") var name = "xvda"
    @Option(help: ArgumentHelp("serve: where to listen.", valueName: "unix:PATH|tcp:HOST:PORT")) var nbd: String?
    @Option(help: "serve: the export's name (clients may also ask for the default, empty name).") var exportName = "xvda"
    @Option(help: "First byte (a multiple of 512).") var offset: UInt64 = 0
    @Option(help: "Bytes (a positive multiple of 512).") var length: UInt64 = 1 << 20
    @Option(help: "Bytes per request batch (a multiple of 512).") var chunk: UInt64 = 64 << 10
    @Option(help: "Pattern seed for write and verify.") var seed: UInt8 = 1
    @Option(help: "Milliseconds between chunks (to watch a stream).") var intervalMs = 0
    @Option(help: "Seconds the whole run may take.") var timeout = 60.0
    @Flag(help: "After the job, run it on every vbd plugged while the guest runs (xenpv block-attach), until a shutdown request.")
    var hotplug = false
    @Option(name: .customLong("vdev"), help: "A disk to use, as the config names it (xvda, xvdb, …); repeat for several (default xvda). A failure on one is reported and the others still run.")
    var vdevs: [String] = []
    @Flag(help: "Also give the domain a vif and echo frames through its backend (without --nic) while the job runs.")
    var echo = false
    @Option(help: "--echo: bytes per frame.") var echoSize = 1000
    @Option(help: "--echo: milliseconds between frames.") var echoIntervalMs = 1
    @Option(help: ArgumentHelp("While the job runs, write this many pages of the guest's memory a second and check them (0: off).",
                               valueName: "PAGES"))
    var dirtyRate = 0
    @Option(help: ArgumentHelp("--dirty-rate: the pages written in turn (default: half the guest's frames).", valueName: "N"))
    var dirtyPages: Int?

    func validate() throws {
        _ = try disks()
        if echo || dirtyRate > 0 {
            guard [.write, .read, .verify, .writeVerify].contains(action) else {
                throw ValidationError("--echo and --dirty-rate go with write, read, verify or write-verify")
            }
        }
        if echo {
            guard nic.netns == nil else { throw ValidationError("--echo and --netns both use the vif: give one of them") }
            try checkFrameSize(echoSize)
            guard echoIntervalMs >= 0 else { throw ValidationError("--echo-interval-ms must be 0 or more") }
        }
        guard dirtyRate >= 0 else { throw ValidationError("--dirty-rate must be 0 or more, not \(dirtyRate)") }
        if let dirtyPages {
            guard dirtyRate > 0 else { throw ValidationError("--dirty-pages goes with --dirty-rate") }
            guard dirtyPages > 0, dirtyPages < options.frames else {
                throw ValidationError("--dirty-pages must be 1 to --frames - 1, not \(dirtyPages)")
            }
        }
        if action == .serve {
            guard let nbd else { throw ValidationError("serve needs --nbd unix:PATH or --nbd tcp:HOST:PORT") }
            do { _ = try BlockExportAddress(parsing: nbd) } catch { throw ValidationError("--nbd: \(error)") }
            guard vdevs.count <= 1 else { throw ValidationError("serve exports one disk: give at most one --vdev") }
        } else if nbd != nil {
            throw ValidationError("--nbd goes with serve")
        }
        if action == .mount {
            guard let directory else { throw ValidationError("mount needs a directory: xenpv guest disk mount DIR") }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("\(directory) is not a directory")
            }
            guard vdevs.count <= 1 else { throw ValidationError("mount shows one disk: give at most one --vdev") }
        } else if directory != nil {
            throw ValidationError("a directory goes with mount")
        }
        guard offset % 512 == 0 else { throw ValidationError("--offset must be a multiple of 512, not \(offset)") }
        guard length > 0, length % 512 == 0 else { throw ValidationError("--length must be a positive multiple of 512, not \(length)") }
        guard chunk > 0, chunk % 512 == 0, chunk <= 16 << 20 else {
            throw ValidationError("--chunk must be a positive multiple of 512 up to 16 MiB, not \(chunk)")
        }
    }

    static func pattern(at offset: UInt64, count: Int, seed: UInt8) -> [UInt8] {
        (0..<UInt64(count)).map { i in
            let o = offset &+ i
            return UInt8(truncatingIfNeeded: (o &* 0x9E37_79B1) >> 11) ^ UInt8(truncatingIfNeeded: o >> 9) ^ seed
        }
    }

    func run() throws {
        let logger = ProcessSupport.bootstrapLogging(verbose: options.verbose)
        let disks = try self.disks()
        let hv = try JoinedDomain.join(options.hypervisor, connect: options.connect,
                                       as: options.request(devices: nic.netns == nil && !echo ? [.vbd] : [.vbd, .vif]))
        defer { hv.close() }
        say("xenpv guest: joined as \(hv.domainID)")
        let shutdown = ShutdownWatch(hv, enabled: !options.noControl)
        defer { shutdown.cancel() }
        let tapNIC = try nic.netns.map { try GuestTapNIC(hv, nic, namespace: $0, connectTimeout: options.connectTimeout, logger: logger) }
        defer { tapNIC?.close() }
        if let tapNIC { shutdown.suspender?.add(tapNIC.endpoint) }
        let beside = try Beside(self, hv: hv, shutdown: shutdown, logger: logger)
        defer { beside.close() }
        var failed: [String] = []
        for disk in disks {
            do { try runJob(on: disk.number, hv: hv, shutdown: shutdown, logger: logger, label: vdevs.isEmpty ? "" : " on \(disk.name)") } catch {
                guard !vdevs.isEmpty else { throw error }
                say("xenpv guest: \(disk.name): \(error)")
                failed.append(disk.name)
            }
        }
        try beside.finish()
        if hotplug {
            say("xenpv guest: following hotplugged vbds until a shutdown request")
            try followHotplug(skipping: Set(disks.map(\.number)), hv: hv, shutdown: shutdown, logger: logger)
        } else if options.untilShutdown {
            say("xenpv guest: waiting for a shutdown request")
            shutdown.wait()
        }
        if let request = shutdown.request { say("xenpv guest: leaving for the \(request.rawValue) request") }
        if !failed.isEmpty { throw CommandError("the job failed on \(failed.joined(separator: ", "))") }
    }

    /// Runs the job on every vbd the toolstack plugs while the guest runs (`xenpv
    /// block-attach`), until a shutdown request; a failure on one is reported and the
    /// guest goes on.
    private func followHotplug(skipping initial: Set<UInt32>, hv: JoinedDomain, shutdown: ShutdownWatch,
                               logger: Logger) throws {
        let changes = HotplugInbox()
        let hotplug = FrontendHotplug(store: hv.store, type: "vbd", domain: hv.domainID)
        let follower = Task {
            guard let stream = try? await hotplug.changes() else { return changes.failed() }
            for await change in stream { changes.push(change) }
        }
        defer { follower.cancel() }
        while shutdown.request == nil {
            if changes.watchFailed { throw CommandError("cannot watch the domain's vbd directory") }
            guard let change = changes.pop(waitingAtMost: 0.2) else { continue }
            switch change {
            case .added(let device) where !initial.contains(device.id):
                say("xenpv guest: vbd \(device.id) plugged")
                do { try runJob(on: device.id, hv: hv, shutdown: shutdown, logger: logger, label: " on vbd \(device.id)") } catch {
                    say("xenpv guest: vbd \(device.id): \(error)")
                }
            case .removed(let device): say("xenpv guest: vbd \(device.id) unplugged")
            case .added: break
            }
        }
    }

    /// The disks named by --vdev (default xvda), with their device numbers.
    func disks() throws -> [VirtualDiskDevice] {
        do { return try (vdevs.isEmpty ? ["xvda"] : vdevs).map { name throws(DomainConfigError) in try VirtualDiskDevice(name: name) } } catch {
            throw ValidationError("--vdev: \(error.message)")
        }
    }

    private func runJob(on number: UInt32, hv: JoinedDomain, shutdown: ShutdownWatch, logger: Logger, label: String) throws {
        let vbd = XenbusDevice(type: "vbd", id: number, frontend: hv.domainID)
        let driver = BlockFrontendDriver(device: vbd, store: hv.store, hypervisor: hv, sharer: try hv.openGrantSharer())
        let endpoint = XenbusEndpoint(role: .frontend, store: hv.store, path: vbd.frontendPath, peerPath: vbd.backendPath,
                                      driver: driver, logger: logger)
        // The handshake ends for good when the device is unplugged; I/O still waiting then
        // (a forced detach removes the device under it) fails with `.closed` instead of
        // waiting for a reconnect that will not come.
        let frontend = driver.frontend
        let task = Task {
            try? await endpoint.run()
            frontend.shutdown()
        }
        defer { task.cancel() }
        shutdown.suspender?.add(endpoint)
        defer { shutdown.suspender?.remove(endpoint) }
        shutdown.addProbe("vbd \(number)", sinceFirstAnswer: { frontend.sinceFirstResponse }) {
            _ = try await frontend.read(at: 0, count: 512)
        }
        defer { shutdown.removeProbe("vbd \(number)") }
        let handshake = Duration.seconds(options.connectTimeout)
        do { try ProcessSupport.runBlocking { try await endpoint.connected(timeout: handshake) } } catch {
            throw ValidationError("the vbd's backend did not connect in \(options.connectTimeout) s (is `xenpv backend --connect \(options.connect ?? "PATH") --disk IMAGE` running?)")
        }
        let info = driver.frontend.info
        let diskBytes = (info?.sectors ?? 0) * UInt64(info?.sectorSize ?? 512)
        if action == .serve, let nbd {
            try serve(driver.frontend, at: BlockExportAddress(parsing: nbd), diskBytes: diskBytes, shutdown: shutdown,
                      logger: logger)
            return
        }
        if action == .mount, let directory {
            try mount(driver.frontend, at: directory, diskBytes: diskBytes, shutdown: shutdown)
            return
        }
        guard offset + length <= diskBytes else {
            throw ValidationError("range \(offset)+\(length) is beyond the \(diskBytes)-byte disk")
        }
        say("xenpv guest: vbd connected (\(diskBytes) bytes)\(label)")
        var job = DiskJob(frontend: driver.frontend, action: action, offset: offset, length: length, chunk: chunk, seed: seed,
                          intervalMs: intervalMs, deadline: Date().addingTimeInterval(timeout))
        job.label = label
        job.stopped = { shutdown.request != nil }
        let finished = job
        try ProcessSupport.runBlocking { try await finished.run() }
    }
}

extension GuestDisk {
    /// What runs beside the disk job: `--echo`'s frames through the vif and
    /// `--dirty-rate`'s memory writer, started before the job and checked after it.
    struct Beside {
        let net: GuestNet?
        let echo: EchoThread?
        let dirtier: GuestDirtier?

        init(_ command: GuestDisk, hv: JoinedDomain, shutdown: ShutdownWatch, logger: Logger) throws {
            let deadline = Date().addingTimeInterval(command.timeout)
            if command.dirtyRate > 0 {
                let pages = command.dirtyPages ?? command.options.frames / 2
                let d: GuestDirtier
                do { d = try GuestDirtier(hv, pages: pages, rate: command.dirtyRate) } catch {
                    throw CommandError("--dirty-rate: cannot allocate \(pages) pages of the guest's memory: \(error)")
                }
                shutdown.aroundSuspend(before: { d.beforeSuspend() }, after: { d.afterSuspend(resumed: $0) })
                d.start()
                say("xenpv guest: writing \(command.dirtyRate) pages/s of \(pages) pages at \(d.address)")
                dirtier = d
            } else {
                dirtier = nil
            }
            if command.echo {
                let n = try GuestNet(hv, shutdown: shutdown, options: command.options, logger: logger)
                net = n
                echo = EchoThread(n, size: command.echoSize, intervalMs: command.echoIntervalMs, deadline: deadline, logger: logger)
            } else {
                (net, echo) = (nil, nil)
            }
        }

        /// Stops both and reports them; a corrupted echo or memory that differs is an error.
        func finish() throws {
            if let echo {
                let outcome = try echo.finish()
                say("xenpv guest: \(outcome.echoed) frames echoed intact (\(outcome.resent) resent)")
            }
            if let dirtier { say(try dirtier.stopAndVerify()) }
        }

        func close() {
            dirtier?.stop()
            net?.close()
        }
    }
}

extension GuestDisk {
    /// Serves the vbd until SIGINT, SIGTERM or a shutdown request from the toolstack,
    /// then closes the listener and every client.
    func serve(_ frontend: BlockFrontend, at address: BlockExportAddress, diskBytes: UInt64, shutdown: ShutdownWatch,
               logger: Logger) throws {
        let server: BlockExportServer
        let bound: BlockExportAddress
        do {
            server = try BlockExportServer(device: frontend, name: exportName, logger: logger)
            bound = try server.listen(on: address)
        } catch {
            throw ValidationError("cannot serve the vbd on \(address): \(error)")
        }
        let readOnly = frontend.info?.readOnly == true ? ", read-only" : ""
        say("xenpv guest: vbd connected (\(diskBytes) bytes\(readOnly))")
        say("xenpv guest: serving \(exportName) on \(bound) (\(bound.uri))")
        // A shutdown request ends the export as a signal does (the handler is installed
        // below, long before dom0's request can arrive).
        shutdown.raiseSIGTERMOnRequest()
        let signal = ProcessSupport.waitForTerminationSignal()
        say("xenpv guest: signal \(signal), closing the export")
        server.shutdown()
        server.waitUntilStopped()
        let c = server.counters
        say("xenpv guest: export closed after \(c.accepted) connections")
    }
}

extension GuestDisk {
    /// Shows the vbd as `directory/name` until SIGINT, SIGTERM, a shutdown request from the
    /// toolstack or `umount directory`, then ends the mount.
    func mount(_ frontend: BlockFrontend, at directory: String, diskBytes: UInt64, shutdown: ShutdownWatch) throws {
        let file: BlockDeviceFile
        do { file = try BlockDeviceFile(frontend, at: directory, name: name) } catch {
            throw ValidationError("cannot mount the vbd on \(directory): \(error)")
        }
        let readOnly = frontend.info?.readOnly == true ? ", read-only" : ""
        say("xenpv guest: vbd connected (\(diskBytes) bytes\(readOnly))")
        say("xenpv guest: the vbd is \(file.path) (umount \(directory) or SIGTERM to end)")
        // A shutdown request, or the mount ending from outside (umount), ends the wait as a
        // signal does (the handler is installed below, long before either can happen).
        shutdown.raiseSIGTERMOnRequest()
        startDetachedThread(named: "unmount-wait") {
            while !file.waitUntilUnmounted(timeout: .seconds(3600)) {}
            kill(getpid(), SIGTERM)
        }
        let signal = ProcessSupport.waitForTerminationSignal()
        if file.isMounted { say("xenpv guest: signal \(signal), unmounting \(directory)") }
        file.unmount()
        guard file.waitUntilUnmounted(timeout: .seconds(120)) else {
            throw CommandError("\(directory) is still in use (a loop device or an open file holds \(file.path)); it is detached and ends when released")
        }
        say("xenpv guest: \(directory) unmounted")
    }
}

/// The I/O of `xenpv guest disk`, in a plain async method: the same code as a
/// closure crashed the 6.3.1 optimizer (coroutine splitting with typed throws).
struct DiskJob: Sendable {
    let frontend: BlockFrontend
    let action: GuestDisk.Action
    let offset: UInt64
    let length: UInt64
    let chunk: UInt64
    let seed: UInt8
    let intervalMs: Int
    let deadline: Date
    /// Appended to the summary line (" on xvdb" when the job names its disk).
    var label = ""
    /// Whether a shutdown request came: the job stops at the next chunk.
    var stopped: @Sendable () -> Bool = { false }

    func run() async throws {
        if action == .writeVerify {
            try await pass(.write)
            try await pass(.verify)
        } else {
            try await pass(action)
        }
    }

    private func pass(_ action: GuestDisk.Action) async throws {
        var at = offset
        var checksum: UInt64 = 0
        while at < offset + length {
            guard Date() < deadline else { throw ValidationError("timed out at byte \(at)") }
            if stopped() {
                if action == .write { try await flush() }
                say("xenpv guest: stopped at byte \(at) for a shutdown request\(label)")
                return
            }
            let n = Int(min(chunk, offset + length - at))
            if action == .write {
                try await write(at: at, GuestDisk.pattern(at: at, count: n, seed: seed))
                say("written \(at + UInt64(n) - offset)/\(length)")
            } else {
                let got = try await read(at: at, count: n)
                if action == .verify {
                    let want = GuestDisk.pattern(at: at, count: n, seed: seed)
                    if let i = (0..<n).first(where: { got[$0] != want[$0] }) {
                        throw ValidationError("verify failed: byte \(at + UInt64(i)) is \(got[i]), expected \(want[i])")
                    }
                }
                for b in got { checksum = (checksum &* 31) &+ UInt64(b) }
            }
            at += UInt64(n)
            if intervalMs > 0 { try await Task.sleep(nanoseconds: UInt64(intervalMs) * 1_000_000) }
        }
        switch action {
        case .write:
            try await flush()
            say("xenpv guest: wrote and flushed \(length) bytes at \(offset)\(label)")
        case .read: say("xenpv guest: read \(length) bytes at \(offset), checksum \(String(checksum, radix: 16))\(label)")
        case .verify: say("xenpv guest: verified \(length) bytes at \(offset)\(label)")
        case .serve, .mount, .writeVerify: break  // served by `GuestDisk.serve` and `GuestDisk.mount`; two passes
        }
    }

    private func write(at: UInt64, _ bytes: [UInt8]) async throws {
        do { try await frontend.write(at: at, bytes) } catch { throw ValidationError("write at \(at): \(error)") }
    }

    private func read(at: UInt64, count: Int) async throws -> [UInt8] {
        do { return try await frontend.read(at: at, count: count) } catch { throw ValidationError("read at \(at): \(error)") }
    }

    private func flush() async throws {
        do { try await frontend.flush() } catch { throw ValidationError("flush: \(error)") }
    }
}

/// Hotplug changes handed from the watching task to the command's thread.
private final class HotplugInbox: @unchecked Sendable {
    // @unchecked: `items` and `watchFailedFlag` are guarded by `lock`.
    private let lock = NSLock()
    private var items: [FrontendHotplug.Change] = []
    private var watchFailedFlag = false
    private let ready = DispatchSemaphore(value: 0)

    func push(_ change: FrontendHotplug.Change) {
        lock.withLock { items.append(change) }
        ready.signal()
    }

    func failed() {
        lock.withLock { watchFailedFlag = true }
        ready.signal()
    }

    var watchFailed: Bool { lock.withLock { watchFailedFlag } }

    /// The oldest change, waiting at most `seconds` for one.
    func pop(waitingAtMost seconds: Double) -> FrontendHotplug.Change? {
        guard ready.wait(timeout: .now() + seconds) == .success else { return nil }
        return lock.withLock { items.isEmpty ? nil : items.removeFirst() }
    }
}
