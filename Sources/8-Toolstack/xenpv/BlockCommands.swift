import ArgumentParser
import Foundation
import XenABI
import XenBus
import XenToolstack

/// `xenpv block-attach DOM DISKSPEC`: `xl block-attach` on a running domain.
struct BlockAttachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "block-attach", abstract: "Plug a disk (an xl DISKSPEC) into a running domain.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The disk, as a config's disk entry: 'format=raw, vdev=xvdb, access=rw, target=/path'.") var disk: String
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            let spec = try DiskSpec(parsing: disk)
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            let device = try await toolstack.attachDisk(spec, to: found.id)
            say("Attached \(spec.vdev) (vbd/\(device.id)) to \(found.name)")
        }
    }
}

/// `xenpv block-detach DOM VDEV`: `xl block-detach`.
struct BlockDetachCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "block-detach",
        abstract: "Unplug a disk from a running domain: ask the backend to close, wait (bounded), remove.")

    @Argument(help: "The domain's name or id.") var domain: String
    @Argument(help: "The disk's vdev (xvdb) or device number (51728).") var vdev: String
    @OptionGroup var options: ToolstackOptions
    @OptionGroup var detach: DetachOptions

    func run() async throws {
        try await toolstackStep {
            let disk = try VirtualDiskDevice(name: vdev)
            let toolstack = try options.toolstack()
            defer { toolstack.close() }
            let found = try await toolstack.resolve(domain)
            try await toolstack.detachDisk(disk, from: found.id, timeout: detach.timeout, force: detach.force)
            say("Detached \(disk) from \(found.name)")
        }
    }
}

/// `xenpv block-list DOM`: `xl block-list`'s columns, from the domain's frontend directories.
struct BlockListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "block-list", abstract: "List a domain's disks as xl block-list does.")

    @Argument(help: "The domain's name or id.") var domain: String
    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        try await toolstackStep {
            let store = try options.store()
            defer { store.close() }
            let found = try await Toolstack.resolve(domain, in: store)
            let base = "/local/domain/\(found.id.rawValue)/device/vbd"
            print("Vdev  BE  handle state evt-ch ring-ref BE-path")
            for dev in ((try? await store.directory(base)) ?? []).compactMap(UInt32.init).sorted() {
                let dir = "\(base)/\(dev)"
                func key(_ k: String) async -> String { String(((try? await store.readIfPresent(dir + "/" + k)) ?? nil ?? "-").prefix(80)) }
                let fields = [await key("backend-id"), "0", await key("state"), await key("event-channel"), await key("ring-ref"),
                              await key("backend")]
                print("\(dev)  \(fields.joined(separator: " "))")
            }
        }
    }
}
