import Foundation
import TestSupport
import Testing
import XenABI
import XenSimulatorDaemon
import XenSimulatorClient
import XenStore
import XenWorld

extension ProcessTests {
    /// The one place a process chooses its world (what `xenpv` and the
    /// example programs share): a simulated join needs a live daemon, and every
    /// way it cannot happen is an error that says why.
    @Suite struct WorldTests {
        @Test func aSimulatedJoinGivesTheDomainAndItsStore() async throws {
            let f = try DaemonIsolationTests.Fixture()
            let guest = try await JoinedDomain.join(.simulated, socket: f.socket, as: .newGuest(frames: 64, devices: [.vbd]))
            defer { guest.close() }
            #expect(guest.world == .simulated)
            #expect(guest.domainID != .dom0)
            // The store speaks as that guest: its own home is relative.
            #expect(try await guest.store.read("domid") == "\(guest.domainID.rawValue)")
            await #expect(throws: XenStoreError.self, "a guest cannot change its own id") {
                try await guest.store.write("domid", "0")
            }
            // Round trips to the daemon, blocking: on a thread of their own, never the pool.
            _ = try await onThread { try guest.openEventChannels().bindUnbound(remote: .dom0) }
        }

        @Test func joinsThatCannotHappenSayWhy() async throws {
            await #expect(throws: WorldError.self) { _ = try await JoinedDomain.join(.simulated, socket: nil, as: .dom0) }
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            do {
                _ = try await JoinedDomain.join(.simulated, socket: dir + "/absent.sock", as: .dom0)
                Issue.record("joined a daemon that is not there")
            } catch {
                #expect(error.description.contains("cannot join the hypervisor at \(dir)/absent.sock"), "\(error)")
            }
            // This machine is no Xen domain: `auto` means the simulator, and asking for Xen fails cleanly.
            #expect(World.auto.resolved == .simulated)
            await #expect(throws: WorldError.self) { _ = try await JoinedDomain.join(.xen, socket: nil, as: .dom0) }
        }
    }
}
