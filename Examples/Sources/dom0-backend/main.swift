// A dom0 backend process: serves every guest's disk from one image file
// (through libaio) and every guest's NIC (echoing frames back), until killed.
//
//   dom0-backend [--hypervisor simulated|xen] [SOCKET] IMAGE
import Foundation
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenHypervisor
import XenNetBack
import XenStore
import XenWorld

func fail(_ message: String, status: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("dom0-backend: \(message)\n".utf8))
    exit(status)
}

do {
    // The world is chosen here, at start-up; the drivers below do not change.
    var arguments = Array(CommandLine.arguments.dropFirst())
    var world = World.auto
    if arguments.first == "--hypervisor", arguments.count >= 2 {
        guard let chosen = World(rawValue: arguments[1]) else { fail("no world \(arguments[1]); auto, simulated or xen") }
        world = chosen
        arguments.removeFirst(2)
    }
    guard arguments.count == (world.resolved == .simulated ? 2 : 1) else {
        fail("usage: dom0-backend [--hypervisor auto|simulated|xen] [SOCKET] IMAGE (SOCKET only when simulated)")
    }
    // Join as dom0's backend; the object is the drivers' `Hypervisor` and
    // carries a store connection speaking as dom0.
    let dom0 = try await JoinedDomain.join(world, socket: arguments.count == 2 ? arguments[0] : nil, as: .backend)
    let store = dom0.store
    let image = arguments.last!
    guard FileManager.default.fileExists(atPath: image) else { fail("no disk image at \(image)", status: 1) }

    // Disks: each vbd the toolstack plugs is served from IMAGE.
    let imageFile = try FileDescriptor.open(FilePath(image), .readOnly)
    let imageSize = try imageFile.closeAfter { try imageFile.seek(offset: 0, from: .end) }
    let disks = BlockBackend(store: store, hypervisor: dom0) { _, _, _ in
        BlockBackendDisk(byteCount: UInt64(imageSize)) {
            try LibaioStorage(path: FilePath(image), directIO: .preferred, queueDepth: 64)
        }
    }
    try await disks.start()

    // NICs: each vif echoes what its guest sends (a TAP on a bridge would be
    // `TapAttachment(name: vif.interfaceName, bridge: "xenbr0", offloads: features.tapOffloads)`).
    let nics = NetBackend(hypervisor: dom0, store: store) { _, _ in EchoAttachment.make() }
    print("dom0-backend: serving disks from \(image) and echoing NICs (\(world.resolved)); Ctrl-C to stop")
    try await nics.run()
} catch {
    // A world that is not there (no /dev/xen, no daemon socket) is a clear error, not a trap.
    FileHandle.standardError.write(Data("dom0-backend: \(error)\n".utf8))
    exit(1)
}
