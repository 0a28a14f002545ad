import Foundation
import Testing
import XenABI
import XenHypervisor
@testable import XenSimulator

/// `SimulatedDomain` as a `DomainSuspending`: the guest's call blocks on its own thread
/// until the test, playing the toolstack, answers; a resume takes away what the old copy
/// held, so a driver releasing it gets errors.
@Suite(.timeLimit(.minutes(5)))
struct SuspendTests {
    /// Runs the guest's suspend call on a thread of its own, started before this returns
    /// (not from a task, which a busy cooperative pool may run late).
    func suspendOnThread(_ guest: SimulatedDomain, timeout: Duration = .seconds(120)) -> Task<Result<SuspendOutcome, HypervisorError>, Never> {
        let (outcome, answer) = AsyncStream.makeStream(of: Result<SuspendOutcome, HypervisorError>.self)
        Thread {
            answer.yield(Result { () throws(HypervisorError) -> SuspendOutcome in try guest.suspend(timeout: timeout) })
            answer.finish()
        }.start()
        return Task {
            for await result in outcome { return result }
            return .failure(HypervisorError(.closed, "the suspend thread gave no outcome"))
        }
    }

    @Test func sharesAreGrantedAgainAfterAResumeWithWhatTheyHold() async throws {
        let m = try Machine(guestFrames: 64)
        let sharer = try m.guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 3, with: .dom0, writable: false)
        for i in 0..<3 { shared.memory.page(i).storeBytes(of: UInt64(0xD000 + i), as: UInt64.self) }
        // Still granted: not this call's to grant twice.
        #expect(throws: HypervisorError.self) { _ = try sharer.shareAgain(shared) }

        let call = suspendOnThread(m.guest)
        #expect(await m.guest.waitForSuspend(timeout: .seconds(60)))
        _ = try m.guest.finishSuspend(.resumed)
        #expect(try await call.value.get() == .resumed)

        let again = try sharer.shareAgain(shared)
        #expect(again.memory == shared.memory && again.peer == .dom0 && !again.writable)
        let mapper = try m.dom0.openGrantMapper()
        let view = try mapper.map(again.refs, from: m.guest.domainID, writable: false)
        for i in 0..<3 { #expect(view.memory.page(i).load(as: UInt64.self) == UInt64(0xD000 + i)) }
        // Read-only, as it was shared.
        #expect(throws: HypervisorError.self) { _ = try mapper.map([again.refs[0]], from: m.guest.domainID, writable: true) }
        try mapper.unmap(view)
        #expect(throws: HypervisorError.self) { _ = try sharer.shareAgain(again) }
        try sharer.unshare(again)
        #expect(m.guest.outstanding().isEmpty, "\(m.guest.outstanding())")
    }

    @Test func aResumeTakesAwayGrantsMappingsAndPortsButNotMemory() async throws {
        let m = try Machine(guestFrames: 64)
        let sharer = try m.guest.openGrantSharer()
        let events = try m.guest.openEventChannels()
        let shared = try sharer.sharePages(count: 2, with: .dom0, writable: true)
        shared.memory.page(0).storeBytes(of: 0xC0FFEE, as: UInt32.self)
        let port = try events.bindUnbound(remote: .dom0)
        let dom0Events = try m.dom0.openEventChannels()
        let dom0Port = try dom0Events.bindInterdomain(remote: m.guest.domainID, remotePort: port)
        let mapper = try m.dom0.openGrantMapper()
        let mapping = try mapper.map(shared.refs[0], from: m.guest.domainID, writable: true)

        let call = suspendOnThread(m.guest)
        #expect(await m.guest.waitForSuspend(timeout: .seconds(60)))
        #expect(m.guest.isSuspendPending)
        let revoked = try m.guest.finishSuspend(.resumed)
        #expect(try await call.value.get() == .resumed)
        #expect(!m.guest.isSuspendPending)
        #expect(revoked.mappings.map(\.handle) == [mapping.handle])
        #expect(Set(revoked.grants.map(\.ref)) == Set(shared.refs))
        #expect(revoked.ports.map(\.port) == [port])

        // The memory is where it was.
        #expect(shared.memory.page(0).load(as: UInt32.self) == 0xC0FFEE)
        // Releasing the old session fails: the grants, the mapping, the port are gone.
        #expect(throws: HypervisorError.self) { try sharer.unshare(shared) }
        #expect(throws: HypervisorError.self) { try events.unbind(port) }
        #expect(throws: HypervisorError.self) { try mapper.unmap(mapping) }
        #expect(throws: HypervisorError.self) { try dom0Events.notify(dom0Port) }
        // The handles stay usable, and a new grant may get an old number: releasing by
        // number after a resume could hit someone else's.
        let again = try sharer.sharePages(count: 1, with: .dom0, writable: false)
        #expect(shared.refs.contains(again.refs[0]))
        let newPort = try events.bindUnbound(remote: .dom0)
        #expect(newPort == port)
        sharer.forget(shared)
        try sharer.unshare(again)
        try events.unbind(newPort)
        events.close()
        dom0Events.close()
        mapper.close()
        sharer.close()
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func aCancelKeepsEverythingAndAFailureIsThrown() async throws {
        let m = try Machine(guestFrames: 64)
        let sharer = try m.guest.openGrantSharer()
        let shared = try sharer.sharePages(count: 1, with: .dom0, writable: true)
        let call = suspendOnThread(m.guest)
        #expect(await m.guest.waitForSuspend(timeout: .seconds(60)))
        // A second call while one waits is refused.
        #expect(throws: HypervisorError.self) { try m.guest.suspend(timeout: .seconds(1)) }
        #expect(try m.guest.finishSuspend(.cancelled).isEmpty)
        #expect(try await call.value.get() == .cancelled)
        #expect(m.guest.outstanding().grants.count == 1)

        let failing = suspendOnThread(m.guest)
        #expect(await m.guest.waitForSuspend(timeout: .seconds(60)))
        try m.guest.failSuspend(.errno(.ioError, "no space for the save file"))
        guard case .failure(let error) = await failing.value else {
            Issue.record("the call should have thrown")
            return
        }
        #expect(error.code == .errno(.ioError))
        // No call waits: nothing to answer.
        #expect(throws: HypervisorError.self) { try m.guest.finishSuspend(.resumed) }
        #expect(m.guest.suspendCalls == 2)
        try sharer.unshare(shared)
        #expect(m.hv.shutdown().isEmpty)
    }

    @Test func aCallWithNoAnswerTimesOut() throws {
        let m = try Machine(guestFrames: 16)
        #expect(throws: HypervisorError.self) { try m.guest.suspend(timeout: .milliseconds(20)) }
        #expect(!m.guest.isSuspendPending)
        #expect(m.hv.shutdown().isEmpty)
    }
}
