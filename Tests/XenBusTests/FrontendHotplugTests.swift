import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
import XenStore
import XenStoreServer

/// A guest follows its devices of one class as the toolstack plugs and unplugs them, and
/// what it writes into its own `device` directory itself is not taken for a device.
@Suite(.timeLimit(.minutes(5)))
struct FrontendHotplugTests {
    @Test func devicesArriveAndLeaveAndTheGuestsOwnEntriesAreNotDevices() async throws {
        let store = try await StoreWithGuest("hp")
        try await withCleanup {
            let (dom0, guest, guestID) = (store.dom0, store.guest, store.guestID)
            let xvda = XenbusDevice(type: "vbd", id: 51712, frontend: guestID)
            try await XenbusToolstack.create(xvda, on: dom0)

            let hotplug = FrontendHotplug(store: guest, type: "vbd", domain: guestID)
            let changes = try await hotplug.changes()
            let inbox = Inbox()
            let reader = Task { for await change in changes { inbox.append(change) } }
            defer { reader.cancel() }

            // What is there when the guest starts to look.
            #expect(await eventually { inbox.items == [.added(xvda)] }, "\(inbox.items)")
            // The guest's own writes: a name that is no number, and a "device" whose backend
            // key points at a directory that is not this device's.
            let dir = hotplug.directory
            try await guest.write(dir + "/junk/backend", xvda.backendPath)
            try await guest.write(dir + "/5/backend", "/local/domain/0/backend/vbd/2/5")
            // A device the toolstack plugs while the guest runs, and one it unplugs.
            let xvdb = XenbusDevice(type: "vbd", id: 51728, frontend: guestID)
            try await XenbusToolstack.create(xvdb, on: dom0)
            #expect(await eventually { inbox.items == [.added(xvda), .added(xvdb)] }, "\(inbox.items)")
            try await XenbusToolstack.remove(xvda, on: dom0)
            #expect(await eventually { inbox.items == [.added(xvda), .added(xvdb), .removed(xvda)] }, "\(inbox.items)")
            #expect(await hotplug.current() == [xvdb])
        } cleanup: {
            await store.stop()
        }
    }
}

/// Changes seen so far, readable from the test.
private final class Inbox: @unchecked Sendable {
    // @unchecked: `changes` is guarded by `lock`.
    private let lock = NSLock()
    private var changes: [FrontendHotplug.Change] = []
    func append(_ change: FrontendHotplug.Change) { lock.withLock { changes.append(change) } }
    var items: [FrontendHotplug.Change] { lock.withLock { changes } }
}
