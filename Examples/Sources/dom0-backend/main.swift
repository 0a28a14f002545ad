// A dom0 backend process: serves every guest's disk from one image file
// (through libaio) and every guest's NIC (echoing frames back), until killed.
//
//   dom0-backend SOCKET IMAGE
import Foundation
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenNetBack
import XenSimulatorDaemon

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    FileHandle.standardError.write(Data("usage: dom0-backend SOCKET IMAGE\n".utf8))
    exit(2)
}
let (socket, image) = (arguments[1], arguments[2])
guard FileManager.default.fileExists(atPath: image) else {
    FileHandle.standardError.write(Data("dom0-backend: no disk image at \(image)\n".utf8))
    exit(1)
}

// Join the hypervisor as dom0: the returned object is the `Hypervisor` the
// drivers use, and it carries a store connection speaking as dom0.
let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0)

// Disks: each vbd the toolstack plugs is served from IMAGE.
let imageFile = try FileDescriptor.open(FilePath(image), .readOnly)
let imageSize = try imageFile.closeAfter { try imageFile.seek(offset: 0, from: .end) }
let disks = BlockBackend(store: dom0.store, hypervisor: dom0) { _, _, _ in
    BlockBackendDisk(byteCount: UInt64(imageSize)) {
        try LibaioStorage(path: FilePath(image), directIO: .preferred, queueDepth: 64)
    }
}
try await disks.start()

// NICs: each vif echoes what its guest sends (a TAP on a bridge would be
// `TapAttachment(name: vif.interfaceName, bridge: "xenbr0", offloads: features.tapOffloads)`).
let nics = NetBackend(hypervisor: dom0, store: dom0.store) { _, _ in EchoAttachment.make() }
print("dom0-backend: serving disks from \(image) and echoing NICs; Ctrl-C to stop")
try await nics.run()
