import Testing
import XenABI
@testable import XenBus

/// Hand-written peers that do what the other machine never does.
@Suite(.timeLimit(.minutes(5)))
struct HandshakeScriptTests {
    @Test func frontendToleratesABackendThatSkipsInitWait() {
        var fe = XenbusFrontend()
        #expect(fe.start() == [.publish(.initialising)])
        #expect(fe.handle(.peerState(.initialising)) == [])
        // Straight to Initialised: still ready for our details.
        #expect(fe.handle(.peerState(.initialised)) == [.prepare])
        #expect(fe.handle(.resourcesReady) == [.publish(.initialised)])
        #expect(fe.handle(.peerState(.connected)) == [.connect, .publish(.connected)])
        #expect(fe.phase == .connected)
    }

    /// After a resume on another host the frontend starts a new session with the
    /// destination's backend and releases nothing: the old grants went with the old copy.
    @Test func frontendResumedElsewhereStartsAgainWithoutReleasing() {
        var fe = XenbusFrontend()
        _ = fe.start()
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        _ = fe.handle(.resourcesReady)
        _ = fe.handle(.peerState(.connected))
        #expect(fe.holdsResources)
        // Our key still says Connected from the old session: written again.
        #expect(fe.handle(.resumed) == [.publish(.initialising)])
        #expect(!fe.holdsResources)
        #expect(fe.phase == .initialising)
        // The destination's backend waits in InitWait (it saw us Connected and waited).
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        #expect(fe.handle(.resourcesReady) == [.publish(.initialised)])
        #expect(fe.handle(.peerState(.connected)) == [.connect, .publish(.connected)])
        // A device asked to close stays closed.
        _ = fe.handle(.closeRequested)
        #expect(fe.handle(.resumed) == [.publish(.closed)])
        #expect(fe.phase == .closed)
        // The backend ignores it.
        var be = XenbusBackend()
        _ = be.start()
        #expect(be.handle(.resumed) == [])
    }

    @Test func backendToleratesAFrontendThatSkipsInitialised() {
        var be = XenbusBackend()
        #expect(be.start() == [.publish(.initialising), .prepare])
        #expect(be.handle(.resourcesReady) == [.publish(.initWait)])
        #expect(be.handle(.peerState(.initialising)) == [])
        // The frontend wrote its ring and went to Connected at once.
        #expect(be.handle(.peerState(.connected)) == [.connect, .publish(.connected)])
    }

    @Test func closeCycleThenReconnect() {
        var fe = XenbusFrontend()
        var be = XenbusBackend()
        _ = fe.start()
        _ = be.start()
        _ = be.handle(.resourcesReady)
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        _ = fe.handle(.resourcesReady)
        #expect(be.handle(.peerState(.initialised)) == [.connect, .publish(.connected)])
        _ = fe.handle(.peerState(.connected))
        // Frontend-initiated close: it waits for the backend to disconnect before freeing.
        #expect(fe.handle(.closeRequested) == [.publish(.closing)])
        #expect(fe.handle(.peerState(.connected)) == [])
        #expect(be.handle(.peerState(.closing)) == [.disconnect, .publish(.closing)])
        #expect(fe.handle(.peerState(.closing)) == [.disconnect, .publish(.closed)])
        #expect(be.handle(.peerState(.closed)) == [.publish(.closed)])
        #expect(fe.handle(.peerState(.closed)) == [])  // asked to stay closed
        // Reconnect: Closed → Initialising → InitWait → … → Connected.
        #expect(fe.handle(.reconnectRequested) == [.publish(.initialising)])
        #expect(be.handle(.peerState(.initialising)) == [.publish(.initWait)])
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        #expect(fe.handle(.resourcesReady) == [.publish(.initialised)])
        #expect(be.handle(.peerState(.initialised)) == [.connect, .publish(.connected)])
        #expect(fe.handle(.peerState(.connected)) == [.connect, .publish(.connected)])
    }

    @Test func aVanishedPeerClosesTheSurvivor() {
        var fe = XenbusFrontend()
        _ = fe.start()
        _ = fe.handle(.peerState(.initWait))
        _ = fe.handle(.resourcesReady)
        _ = fe.handle(.peerState(.connected))
        #expect(fe.handle(.peerState(nil)) == [.disconnect, .publish(.closed)])
        #expect(fe.peerGone)
        var be = XenbusBackend()
        _ = be.start()
        _ = be.handle(.resourcesReady)
        _ = be.handle(.peerState(.initialised))
        #expect(be.handle(.peerState(.unknown)) == [.disconnect, .publish(.closed)])
    }

    /// A backend restarted under a connected frontend finds it Connected with the old
    /// session's ring keys: it waits for the frontend to start over instead of connecting
    /// to them (a bind of the old event channel fails, and the device closed for good).
    @Test func aRestartedBackendWaitsForAStaleConnectedFrontendToReset() {
        var be = XenbusBackend()
        _ = be.start()
        #expect(be.handle(.peerState(.connected)) == [])
        #expect(be.handle(.resourcesReady) == [.publish(.initWait)])
        #expect(be.handle(.peerState(.connected)) == [])
        // The frontend saw our InitWait, released its old ring and starts over.
        var fe = XenbusFrontend()
        _ = fe.start()
        _ = fe.handle(.peerState(.initWait))
        _ = fe.handle(.resourcesReady)
        _ = fe.handle(.peerState(.connected))
        // It withdraws its keys first: this backend may have read them before.
        #expect(fe.handle(.peerState(.initWait)) == [.publish(.closing), .readPeer])
        #expect(fe.handle(.peerState(.initWait)) == [])
        #expect(be.handle(.peerState(.closing)) == [.publish(.closing)])
        #expect(fe.handle(.peerState(.closing)) == [.disconnect, .publish(.closed)])
        #expect(be.handle(.peerState(.closed)) == [.publish(.closed)])
        #expect(fe.handle(.peerState(.closed)) == [.publish(.initialising)])
        #expect(be.handle(.peerState(.initialising)) == [.publish(.initWait)])
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        #expect(fe.handle(.resourcesReady) == [.publish(.initialised)])
        #expect(be.handle(.peerState(.initialised)) == [.connect, .publish(.connected)])
    }

    /// A backend's Closed read before the frontend withdrew its keys may come from a backend
    /// that goes on to InitWait and maps the keys it read (its reading was late too): the
    /// frontend withdraws them, and releases them only on a Closing or Closed read after that.
    @Test func keysAreReleasedOnlyOnAReadingTakenAfterTheyWereWithdrawn() {
        var fe = XenbusFrontend()
        _ = fe.start()
        _ = fe.handle(.peerState(.initWait))
        _ = fe.handle(.resourcesReady)
        #expect(fe.handle(.peerState(.closed)) == [.publish(.closing), .readPeer])
        #expect(fe.holdsResources)
        // The fresh reading: the backend had gone on to InitWait (and may map the keys).
        #expect(fe.handle(.peerState(.initWait)) == [])
        #expect(fe.handle(.peerState(.connected)) == [])
        #expect(fe.holdsResources)
        // It saw our Closed: it unmapped and closed; now they go, and a new session follows.
        #expect(fe.handle(.peerState(.closed)) == [.disconnect, .publish(.closed), .publish(.initialising)])
        #expect(!fe.holdsResources)
    }

    @Test func aRestartedFrontendResetsAStaleConnectedBackend() {
        var fe = XenbusFrontend()
        _ = fe.start()
        #expect(fe.handle(.peerState(.connected)) == [.publish(.closing)])
        #expect(fe.handle(.peerState(.closing)) == [.publish(.closed)])
        #expect(fe.handle(.peerState(.closed)) == [.publish(.initialising)])
        #expect(fe.handle(.peerState(.initWait)) == [.prepare])
        #expect(!fe.holdsResources)
    }
}

/// A refused connect: the backend holds Closing until the frontend starts a new session,
/// so two honest machines do not loop on a peer's bad keys.
@Suite(.timeLimit(.minutes(5)))
struct HandshakeRefusalTests {
    /// Both machines up to the backend's `.connect`.
    static func atConnect() -> (XenbusFrontend, XenbusBackend) {
        var fe = XenbusFrontend()
        var be = XenbusBackend()
        _ = fe.start()
        _ = be.start()
        _ = be.handle(.resourcesReady)
        _ = fe.handle(.peerState(.initWait))
        _ = fe.handle(.resourcesReady)
        #expect(be.handle(.peerState(.initialised)) == [.connect, .publish(.connected)])
        return (fe, be)
    }

    @Test func aRefusingBackendHoldsClosingUntilTheFrontendStartsOver() {
        var (fe, be) = Self.atConnect()
        #expect(be.handle(.connectRefused) == [.disconnect, .publish(.closing)])
        #expect(be.refused)
        // The frontend lets go and closes; the backend does not answer with Closed, which
        // would make the frontend offer a new session on the same keys.
        #expect(fe.handle(.peerState(.closing)) == [.publish(.closing), .readPeer])
        #expect(fe.handle(.peerState(.closing)) == [.disconnect, .publish(.closed)])
        #expect(be.handle(.peerState(.closed)) == [])
        #expect(fe.handle(.peerState(.closing)) == [])
        #expect(be.phase == .closing && fe.phase == .closed)
        // The same state written again is no new session.
        #expect(be.handle(.peerState(.closed)) == [])
        // A new session (a restarted or repaired frontend) is served again.
        #expect(be.handle(.peerState(.initialising)) == [.publish(.initWait)])
        #expect(!be.refused)
    }

    @Test func aRefusedDeviceStillUnplugsAndNoticesItsFrontendVanish() {
        var (_, be) = Self.atConnect()
        _ = be.handle(.connectRefused)
        _ = be.handle(.peerState(.closed))
        #expect(be.handle(.closeRequested) == [])
        #expect(be.handle(.peerState(.closed)) == [.publish(.closed)])
        var (_, other) = Self.atConnect()
        _ = other.handle(.connectRefused)
        #expect(other.handle(.peerState(nil)) == [.publish(.closed)])
        #expect(other.peerGone)
    }

    @Test func aRefusingFrontendClosesForGood() {
        var (fe, be) = Self.atConnect()
        _ = be.handle(.peerState(.initialised))
        #expect(fe.handle(.peerState(.connected)) == [.connect, .publish(.connected)])
        #expect(fe.handle(.connectRefused) == [.publish(.closing)])
        #expect(be.handle(.peerState(.closing)) == [.disconnect, .publish(.closing)])
        #expect(fe.handle(.peerState(.closing)) == [.disconnect, .publish(.closed)])
        #expect(fe.closeWanted && fe.phase == .closed)
        #expect(be.handle(.peerState(.closed)) == [.publish(.closed)])
        #expect(fe.handle(.peerState(.closed)) == [])
    }
}
