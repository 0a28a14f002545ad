import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenBus
import XenSimulatorClient
import XenSimulatorDaemon
import XenStore
import XenToolstack

/// The toolstack library against an in-process hypervisor daemon: the layout it
/// writes (libxl's keys and permissions), what a guest may and may not change,
/// the guest half of the control protocol, and destroy.
@Suite(.timeLimit(.minutes(10)), .serialized)
struct ToolstackLibraryTests {
    /// An image of `bytes` zero bytes in `dir`.
    static func image(_ dir: String, _ name: String, bytes: Int = 1 << 20) -> String {
        let path = dir + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        _ = truncate(path, off_t(bytes))
        return path
    }

    static func config(_ dir: String, name: String, extraLines: String = "") throws -> DomainConfig {
        let a = image(dir, "a.img"), b = image(dir, "b.img")
        return try DomainConfig(parsing: """
            name = "\(name)"
            kernel = "/bin/true"
            memory = 16
            disk = [ 'format=raw, vdev=xvda, access=rw, target=\(a)', 'file:\(b),xvdb,r' ]
            vif = [ 'mac=00:16:3e:01:02:03, bridge=xenpvbr0, ip=10.0.0.2, script=vif-route' ]
            \(extraLines)
            """, fileName: "test.cfg")
    }

    @Test func theLayoutIsLibxlsAndTheGuestCannotChangeWhatIsDom0s() async throws {
        let f = try DaemonFixture()
        try await withCleanup {
            // Joins are round trips to the daemon, blocking: on a thread of their own, never the pool.
            let socket = f.socket
            let toolstack = try await onThread { try Toolstack(socketPath: socket) }
            defer { toolstack.close() }
            let config = try Self.config(f.dir, name: "layout")
            let created = try await toolstack.create(config)
            let id = created.id
            let store = toolstack.store
            let home = "/local/domain/\(id.rawValue)"
            let vm = "/vm/\(created.uuid)"

            // The domain's nodes and libxl's permissions: roperm (dom0's, the guest reads) and rwperm (the guest's).
            let roperm = XenStorePermissions(owner: .dom0, grants: [.init(.read, id)])
            let rwperm = XenStorePermissions(owner: id)
            #expect(try await store.read(home + "/name") == "layout")
            #expect(try await store.read(home + "/domid") == "\(id.rawValue)")
            #expect(try await store.read(home + "/vm") == vm)
            #expect(try await store.read(home + "/memory/target") == "16384")
            #expect(try await store.read(home + "/memory/static-max") == "16384")
            #expect(try await store.read(vm + "/uuid") == created.uuid)
            #expect(try await store.read(vm + "/name") == "layout")
            #expect(try await store.read(vm + "/start_time").contains("."))
            #expect(try await store.permissions(home) == roperm)
            #expect(try await store.permissions(vm) == roperm)
            #expect(try await store.permissions(home + "/control") == roperm)
            for key in ["control/shutdown", "control/feature-poweroff", "control/feature-reboot", "device", "data", "error", "drivers",
                        "attr", "feature"] {
                #expect(try await store.permissions(home + "/" + key) == rwperm, "\(key)")
            }

            // Each disk its own vbd, numbered by its vdev, with libxl's backend keys.
            #expect(created.devices.map(\.id) == [51712, 51728, 0])
            let a = "/local/domain/0/backend/vbd/\(id.rawValue)/51712"
            let b = "/local/domain/0/backend/vbd/\(id.rawValue)/51728"
            #expect(try await store.read(a + "/params") == config.disks[0].target)
            #expect(try await store.read(a + "/mode") == "w")
            #expect(try await store.read(b + "/mode") == "r")
            #expect(try await store.read(b + "/dev") == "xvdb")
            for key in ["type", "device-type", "removable", "bootable", "discard-enable", "frontend", "frontend-id", "online", "state"] {
                #expect(try await store.exists(a + "/" + key), "\(key)")
            }
            #expect(try await store.permissions(a) == XenStorePermissions(owner: .dom0, grants: [.init(.read, id)]))
            #expect(try await store.read(home + "/device/vbd/51728/virtual-device") == "51728")
            #expect(try await store.permissions(home + "/device/vbd/51728") == XenStorePermissions(owner: id, grants: [.init(.read, .dom0)]))
            let vif = "/local/domain/0/backend/vif/\(id.rawValue)/0"
            #expect(try await store.read(vif + "/mac") == "00:16:3e:01:02:03")
            #expect(try await store.read(vif + "/script") == "vif-route")
            #expect(try await store.read(vif + "/ip") == "10.0.0.2")
            #expect(try await store.read(home + "/device/vif/0/mac") == "00:16:3e:01:02:03")

            // The guest joins with its token; what is dom0's it reads and cannot write.
            let token = created.token
            let guest = try await onThread { try RemoteHypervisor(socketPath: socket, as: .guest(token: token), onDaemonLost: ignoreLoss) }
            #expect(guest.domainID == id)
            #expect(try await guest.store.read(a + "/params") == config.disks[0].target)
            for path in [a + "/params", a + "/mode", home + "/name", home + "/vm", home + "/memory/target", vm + "/name"] {
                await #expect(throws: XenStoreError.self, "\(path)") { try await guest.store.write(path, "/etc/shadow") }
            }
            #expect(try await store.read(a + "/params") == config.disks[0].target)
            // Its own control keys it may write.
            try await guest.store.write(home + "/control/feature-poweroff", "1")

            // A second domain may not take the same name.
            await #expect(throws: ToolstackError.self) { _ = try await toolstack.create(config) }

            // The guest leaves: the daemon removes the domain, its devices and its /vm entry.
            guest.close()
            #expect(await toolstack.waitUntilGone(id, timeout: 180))
            #expect(await eventually(180) {
                let backends = (try? await store.directory("/local/domain/0/backend/vbd")) ?? []
                let vms = (try? await store.directory("/vm")) ?? []
                return !backends.contains("\(id.rawValue)") && !vms.contains(created.uuid)
            })
            #expect(f.daemon.report().domains == [.dom0])
        } cleanup: {
            await f.stop()
        }
    }

    /// Linux's manage.c: a known request is cleared in the transaction that reads it and
    /// delivered; anything else (here the guest's own garbage) is left alone and ignored.
    @Test func theGuestAcknowledgesRequestsAndIgnoresGarbage() async throws {
        let f = try DaemonFixture()
        try await withCleanup {
            // Joins are round trips to the daemon, blocking: on a thread of their own, never the pool.
            let socket = f.socket
            let toolstack = try await onThread { try Toolstack(socketPath: socket) }
            defer { toolstack.close() }
            let created = try await toolstack.create(try DomainConfig(parsing: "name = \"ctl\"\nkernel = \"/bin/true\"\nmemory = 16", fileName: "ctl.cfg"))
            let token = created.token
            let guest = try await onThread { try RemoteHypervisor(socketPath: socket, as: .guest(token: token), onDaemonLost: ignoreLoss) }
            defer { guest.close() }
            let key = "/local/domain/\(created.id.rawValue)/control/shutdown"
            let requests = try await GuestControl(store: guest.store, domain: guest.domainID).requests()
            #expect(try await toolstack.store.read("/local/domain/\(created.id.rawValue)/control/feature-poweroff") == "1")
            let garbage = "poweroff\u{7f}" + String(repeating: "x", count: 1000)
            try await guest.store.write(key, garbage)
            #expect(try await toolstack.store.read(key) == garbage)
            #expect(await Toolstack.domains(in: toolstack.store).first { $0.id == created.id }?.shutdownRequested == false)
            try await toolstack.requestShutdown(created.id, .reboot)
            let first = try await withTimeout(180) { () async -> ShutdownRequest? in
                var iterator = requests.makeAsyncIterator()
                return await iterator.next()
            }
            #expect(first == .reboot)
            #expect(try await toolstack.store.read(key) == "")
        } cleanup: {
            await f.stop()
        }
    }

    @Test func destroyRemovesADomainWhoseProgramNeverCame() async throws {
        let f = try DaemonFixture()
        try await withCleanup {
            // Joins are round trips to the daemon, blocking: on a thread of their own, never the pool.
            let socket = f.socket
            let toolstack = try await onThread { try Toolstack(socketPath: socket) }
            defer { toolstack.close() }
            let created = try await toolstack.create(try Self.config(f.dir, name: "never"))
            #expect(f.daemon.report().domains.contains(created.id))
            try await toolstack.destroy(created.id, timeout: 180)
            #expect(f.daemon.report().domains == [.dom0])
            let store = toolstack.store
            #expect(try await !store.exists("/local/domain/\(created.id.rawValue)"))
            #expect(try await !store.exists("/vm/\(created.uuid)"))
            #expect(await eventually(180) { ((try? await store.directory("/local/domain/0/backend/vbd")) ?? []).isEmpty })
            await #expect(throws: ToolstackError.self) { try await toolstack.resolve("never") }
            // A missing or relative target is refused before any domain is made.
            for target in ["/nonexistent/disk.img", "relative.img"] {
                let bad = try DomainConfig(parsing: "name = \"bad\"\nkernel = \"/bin/true\"\ndisk = [ '\(target),raw,xvda,w' ]", fileName: "bad.cfg")
                await #expect(throws: ToolstackError.self) { _ = try await toolstack.create(bad) }
            }
            #expect(f.daemon.report().domains == [.dom0])
            #expect(f.daemon.pendingDomains == 0)
        } cleanup: {
            await f.stop()
        }
    }
}
