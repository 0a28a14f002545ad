// A guest program: uses its disk (xvda) and NIC (vif 0): writes a block and
// reads it back, sends a frame and waits for its echo.
//
//   guest-app [--hypervisor simulated|xen] [SOCKET]
import Foundation
import XenABI
import XenBlockFront
import XenBus
import XenHypervisor
import XenNetFront
import XenStore
import XenWorld

func usage() -> Never {
    FileHandle.standardError.write(Data("usage: guest-app [--hypervisor auto|simulated|xen] [SOCKET] (SOCKET only when simulated)\n".utf8))
    exit(2)
}

do {
    // The world is chosen here, at start-up; the drivers below do not change.
    var arguments = Array(CommandLine.arguments.dropFirst())
    var world = World.auto
    if arguments.first == "--hypervisor", arguments.count >= 2 {
        guard let chosen = World(rawValue: arguments[1]) else { usage() }
        world = chosen
        arguments.removeFirst(2)
    }
    guard arguments.count == (world.resolved == .simulated ? 1 : 0) else { usage() }
    // Simulated, the daemon creates the domain and, as the toolstack, its vbd
    // and vif; in a real domU the toolstack (xl) made them and the store says who we are.
    let guest = try await JoinedDomain.join(world, socket: arguments.first, as: .newGuest(frames: 4096, devices: [.vbd, .vif]))
    let store = guest.store

    /// Runs the frontend half of a device's handshake; returns once Connected.
    func connect(_ device: XenbusDevice, _ driver: any XenbusDeviceDriver) async throws -> XenbusEndpoint {
        let endpoint = XenbusEndpoint(role: .frontend, store: store, path: device.frontendPath,
                                      peerPath: device.backendPath, driver: driver)
        Task { try await endpoint.run() }
        try await endpoint.connected(timeout: .seconds(10))
        return endpoint
    }

    // The disk: 4 KiB at offset 1 MiB, written, flushed, read back.
    let vbd = XenbusDevice(type: "vbd", id: 51712, frontend: guest.domainID)
    let disk = BlockFrontendDriver(device: vbd, store: store, hypervisor: guest, sharer: try guest.openGrantSharer())
    let diskEndpoint = try await connect(vbd, disk)
    let block = (0 ..< 4096).map { UInt8(truncatingIfNeeded: $0 * 7) }
    try await disk.frontend.write(at: 1 << 20, block)
    try await disk.frontend.flush()
    let readBack = try await disk.frontend.read(at: 1 << 20, count: 4096)
    print("guest-app: disk \(readBack == block ? "wrote and read back 4 KiB intact" : "READ BACK DIFFERENT DATA")")

    // The NIC: one frame out, its echo back.
    let vif = XenbusDevice(type: "vif", id: 0, frontend: guest.domainID)
    let port = PacketPort()
    let nicEndpoint = try await connect(vif, NetFrontendDriver(hypervisor: guest, store: store, path: vif.frontendPath, port: port))
    let frame = [UInt8](repeating: 0xff, count: 6) + [0x00, 0x16, 0x3e, 0, 0, 1, 0x88, 0xb5] + [UInt8](repeating: 42, count: 100)
    try await port.send(frame)
    // Wait for the echo at most 10 s.
    let waiter = Task { for await packet in port.packets { return Optional(packet) }; return nil }
    let timer = Task { try await Task.sleep(nanoseconds: 10_000_000_000); waiter.cancel() }
    let echo = await waiter.value
    timer.cancel()
    print("guest-app: NIC sent \(frame.count) bytes, \(echo == nil ? "no echo" : "an echo of \(echo!.bytes.count) bytes came back")")

    diskEndpoint.requestClose()
    nicEndpoint.requestClose()
    exit(readBack == block && echo != nil ? 0 : 1)
} catch {
    // A world that is not there (no /dev/xen, no daemon socket) is a clear error, not a trap.
    FileHandle.standardError.write(Data("guest-app: \(error)\n".utf8))
    exit(1)
}
