import Foundation
import Testing
import XenSimulatorDaemon

extension ProcessTests {
    /// When a guest's process dies the daemon removes its devices with dom0's rights. The
    /// frontend's `backend` key is the guest's own to write, so it must not choose what goes.
    @Suite(.serialized)
    struct DeadGuestCleanupTests {
        @Test func aDeadGuestsBackendKeyCannotAimTheCleanupAtDom0sNodes() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let daemon = HypervisorDaemon(socketPath: dir + "/hv.sock", logger: quietLogger())
            try daemon.start()
            defer { daemon.stop() }
            let dom0 = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .dom0, onDaemonLost: ignoreLoss)
            defer { dom0.close() }
            try await dom0.store.write("/local/domain/0/keep", "dom0's")
            let guest = try RemoteHypervisor(socketPath: dir + "/hv.sock", as: .newGuest(frames: 64, devices: .vif),
                                             onDaemonLost: ignoreLoss)
            let id = guest.domainID.rawValue
            let fe = "/local/domain/\(id)/device/vif/0"
            #expect(try await guest.store.read(fe + "/backend") == "/local/domain/0/backend/vif/\(id)/0")
            try await guest.store.write(fe + "/backend", "/local/domain/0/keep")
            guest.close()

            // The guest's home goes, and (by the daemon's later sweep) its real backend directory.
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                let home = try await dom0.store.exists("/local/domain/\(id)")
                let backend = try await dom0.store.exists("/local/domain/0/backend/vif/\(id)")
                if !home && !backend { break }
                try await Task.sleep(nanoseconds: 20_000_000)
            }
            #expect(try await dom0.store.exists("/local/domain/\(id)") == false)
            #expect(try await dom0.store.exists("/local/domain/0/backend/vif/\(id)") == false)
            #expect(try await dom0.store.read("/local/domain/0/keep") == "dom0's")
        }
    }
}
