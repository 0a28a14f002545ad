// A dom0 backend process: serves every guest's disk from one image file
// (through libaio) and every guest's NIC (echoing frames back), until killed.
//
//   dom0-backend [--hypervisor simulated|xen] [SOCKET] IMAGE
import Foundation
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenHost
import XenHypervisor
import XenNetBack
import XenSimulatorDaemon
import XenStore

func fail(_ message: String, status: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("dom0-backend: \(message)\n".utf8))
    exit(status)
}

do {
    // The world is chosen here, at start-up; the drivers below do not change.
    var arguments = Array(CommandLine.arguments.dropFirst())
    var world = XenHost.isAvailable ? "xen" : "simulated"
    if arguments.first == "--hypervisor", arguments.count >= 2 {
        world = arguments[1]
        arguments.removeFirst(2)
    }
    let dom0: any Hypervisor
    let store: any XenStoreConnection
    switch (world, arguments.count) {
    case ("xen", 1):
        dom0 = XenHost(domainID: .dom0)
        store = try LibXenStore()
    case ("simulated", 2):
        // Join the daemon as dom0; the object is the drivers' `Hypervisor` and
        // carries a store connection speaking as dom0.
        let remote = try RemoteHypervisor(socketPath: arguments[0], as: .backend)
        (dom0, store) = (remote, remote.store)
    default:
        fail("usage: dom0-backend [--hypervisor simulated|xen] [SOCKET] IMAGE (SOCKET only when simulated)")
    }
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
    print("dom0-backend: serving disks from \(image) and echoing NICs (\(world)); Ctrl-C to stop")
    try await nics.run()
} catch {
    // A world that is not there (no /dev/xen, no daemon socket) is a clear error, not a trap.
    FileHandle.standardError.write(Data("dom0-backend: \(error)\n".utf8))
    exit(1)
}
