import Foundation
import Logging
import TestSupport
import Testing
import XenABI
import XenBus
import XenHypervisor
import XenLocks
import XenStore
import XenStoreServer

/// `GuestSuspender.run` as a guest program uses it with work of its own around each
/// suspend: one request at a time is served, a request that comes while one is being
/// served is acknowledged and ignored, and every other request goes on to the program.
@Suite(.timeLimit(.minutes(5)))
struct GuestSuspenderRunTests {
    /// The toolstack never answers here: nothing in these tests reaches the hypervisor.
    private final class NoHypervisor: DomainSuspending {
        func suspend(timeout: Duration) throws(HypervisorError) -> SuspendOutcome {
            throw HypervisorError(.closed, "not in this test")
        }
    }

    private final class ResumingHypervisor: DomainSuspending {
        let outcome: SuspendOutcome
        let settled = Locked(0)
        init(_ outcome: SuspendOutcome = .resumed) { self.outcome = outcome }
        func suspend(timeout: Duration) throws(HypervisorError) -> SuspendOutcome { outcome }
        func resumeSettled() { settled.withLock { $0 += 1 } }
    }

    /// The hypervisor hears once per resume that the devices are connected again (with
    /// none, at once), so it can start the clean-up it put off; after a cancel it hears nothing.
    @Test func aResumeIsSettledOnceItsDevicesAreConnectedAgain() async throws {
        let hypervisor = ResumingHypervisor()
        let suspender = GuestSuspender(hypervisor: hypervisor)
        #expect(await suspender.suspend() == .resumed)
        _ = await suspender.reconnectedDevices(timeout: .seconds(60))
        #expect(await eventually { hypervisor.settled.withLock { $0 } == 1 })
        #expect(await suspender.suspend() == .resumed)
        #expect(await eventually { hypervisor.settled.withLock { $0 } == 2 })

        let cancelling = ResumingHypervisor(.cancelled)
        #expect(await GuestSuspender(hypervisor: cancelling).suspend() == .cancelled)
        try await Task.sleep(for: .milliseconds(50))
        #expect(cancelling.settled.withLock { $0 } == 0)
    }

    /// A guest with no device has nothing to reconnect: its reconnection is the resume.
    @Test func withNoDeviceTheReconnectionIsTheResume() async throws {
        let suspender = GuestSuspender(hypervisor: ResumingHypervisor())
        #expect(await suspender.reconnected(timeout: .seconds(1)) == nil, "no suspend yet")
        #expect(await suspender.suspend() == .resumed)
        let devices = try #require(await suspender.reconnectedDevices(timeout: .seconds(60)))
        #expect(devices.isEmpty)
        let resumed = try #require(suspender.lastTiming?.resumed)
        #expect(await suspender.reconnected(timeout: .seconds(60)) == resumed)
    }

    @Test func oneSuspendIsServedAtATimeAndOtherRequestsGoToTheProgram() async throws {
        let store = try await StoreWithGuest("gs")
        try await withCleanup {
            let (dom0, guest, guestID, logger) = (store.dom0, store.guest, store.guestID, store.logger)
            let home = XenStorePath.home(of: guestID)
            // As libxl: `control` is the guest's, so it can acknowledge a request.
            try await dom0.mkdir(home + "/control")
            try await dom0.setPermissions(home + "/control", XenStorePermissions(owner: guestID))

            let served = Locked(0)
            let others = Locked<[ShutdownRequest]>([])
            let gate = Locked(false)
            let suspender = GuestSuspender(hypervisor: NoHypervisor(), logger: logger)
            let control = GuestControl(store: guest, domain: guestID)
            let running = Task {
                try await suspender.run(control: control, serving: { _ in
                    served.withLock { $0 += 1 }
                    // Serving lasts until the test opens the gate (bounded, so nothing hangs).
                    let deadline = ContinuousClock.now + .seconds(60)
                    while !gate.withLock({ $0 }) && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
                }, otherRequests: { r in others.withLock { $0.append(r) } })
            }
            defer { running.cancel() }
            #expect(await eventually { (try? await dom0.readIfPresent(home + "/" + GuestSuspender.featureKey)) == "1" })

            let key = home + "/" + GuestControl.shutdownKey
            func request(_ value: String) async throws {
                try await dom0.write(key, value)
                // Acknowledged: the guest clears the key before it acts.
                #expect(await eventually { (try? await dom0.read(key)) == "" })
            }
            try await request("suspend")
            #expect(await eventually { served.withLock { $0 } == 1 })
            try await request("suspend")  // while the first is served: ignored
            try await request("poweroff")
            #expect(await eventually { others.withLock { $0 } == [.poweroff] })
            #expect(served.withLock { $0 } == 1)

            gate.withLock { $0 = true }
            // Once served, the next request is served again (the busy mark is gone).
            let next = ContinuousClock.now + .seconds(minimumDeadline)
            while served.withLock({ $0 }) < 2 && ContinuousClock.now < next {
                try await request("suspend")
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(served.withLock { $0 } >= 2)
        } cleanup: {
            await store.stop()
        }
    }
}
