import DriverTestSupport
import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBlockFront
import XenBus
import XenLocks
import XenStore

/// Values a hostile peer writes in its own xenstore directory: 2^64-1 where a count or
/// an order belongs once trapped blkback (every guest lost its disks) or blkfront. Now
/// that one disk closes with the reason in its `error` key, and the other disk works.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct BlockHostileKeysTests {
    static let huge = "18446744073709551615"

    @Test(arguments: [(XenbusKey.multiQueueNumQueues, "1...4"), (XenbusKey.ringPageOrder, "0...4")])
    func aHugeFrontendKeyClosesThatDiskOnceAndAnotherDiskWorks(key: String, range: String) async throws {
        let log = LogLines()
        let world = try await XenbusBlockWorld(backendLog: log)
        let device = XenbusDevice(type: "vbd", id: 51712, frontend: world.guest.domainID)
        try await XenbusToolstack.create(device, on: world.dom0Store, frontendKeys: ["virtual-device": "51712"],
                                         backendKeys: ["mode": "w", "params": world.image.path, "type": "file"])
        // The guest runs no blkfront here: it writes the key and says Initialised.
        try await world.guestStore.write(device.frontendPath + "/" + key, Self.huge)
        try await world.guestStore.writeState(device.frontendPath, .initialised)

        let error = try await poll(world.dom0Store, device.backendPath + "/error")
        #expect(error == "connect: \(device.frontendPath)/\(key) = \"\(Self.huge)\" (outOfRange): expected a decimal in \(range)")
        #expect(try await poll(world.dom0Store, device.backendPath + "/state") { $0 == "5" } == "5")

        let good = try await world.addDisk(id: 51728)
        #expect(await world.connected(good))
        let fe = good.frontend
        try await withTimeout(20) {
            try await fe.write(at: 8192, [UInt8](repeating: 0x5A, count: 16384))
            #expect(try await fe.read(at: 8192, count: 16384) == [UInt8](repeating: 0x5A, count: 16384))
        }
        // Counted once everything above is done: the refused device was not connected again.
        #expect(log.count(containing: "connect failed") == 1, "\(log.lines)")
        #expect(try await world.dom0Store.readState(device.backendPath) == .closing)

        try await world.guestStore.writeState(device.frontendPath, .closed)
        #expect(try await world.teardown().isEmpty)
    }

    @Test(arguments: [(XenbusKey.multiQueueMaxQueues, "prepare", "1...4294967295"),
                      (XenbusKey.featureMaxIndirectSegments, "connect", "0...4294967295")])
    func aHugeBackendKeyClosesThatDiskInTheGuestAndAnotherDiskWorks(key: String, hook: String, range: String) async throws {
        let world = try await XenbusBlockWorld()
        let device = XenbusDevice(type: "vbd", id: 51712, frontend: world.guest.domainID)
        // dom0's blkback leaves this disk alone; the test is its (hostile) backend.
        await world.backend.stop(device)
        let bad = try await world.addDisk(id: 51712)
        let be = device.backendPath, s = world.dom0Store
        for (k, v) in [(XenbusKey.sectors, "16384"), (XenbusKey.sectorSize, "512"), (XenbusKey.info, "0"), (key, Self.huge)] {
            try await s.write(be + "/" + k, v)
        }
        try await s.writeState(be, .initWait)
        if hook == "connect" {
            #expect(try await poll(s, device.frontendPath + "/state") { $0 == "3" } == "3")
            try await s.writeState(be, .connected)
        }
        let error = try await poll(s, device.frontendPath + "/error")
        #expect(error == "\(hook): \(be)/\(key) = \"\(Self.huge)\" (outOfRange): expected a decimal in \(range)")
        // The guest's blkfront closes that disk (after the backend lets go of its rings).
        try await s.writeState(be, .closed)
        #expect(try await poll(s, device.frontendPath + "/state") { $0 == "6" } == "6")
        #expect(bad.frontend.info == nil)

        let good = try await world.addDisk(id: 51728)
        #expect(await world.connected(good))
        let fe = good.frontend
        try await withTimeout(20) {
            try await fe.write(at: 0, [UInt8](repeating: 0xA5, count: 4096))
            #expect(try await fe.read(at: 0, count: 4096) == [UInt8](repeating: 0xA5, count: 4096))
        }
        #expect(try await world.teardown().isEmpty)
    }

    /// The node's value once it exists and satisfies `accept`, polled for at most `seconds`
    /// (or the last value read).
    func poll(_ store: XenStoreClient, _ path: String, seconds: Double = 20,
              until accept: (String) -> Bool = { _ in true }) async throws -> String? {
        var last: String?
        _ = try await eventually(seconds) {
            last = try await store.readIfPresent(path)
            return last.map(accept) ?? false
        }
        return last
    }
}
