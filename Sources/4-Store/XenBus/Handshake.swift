import XenABI

/// What a XenBus endpoint is told: the peer's `state` as last read, or a local event.
///
/// Contract: deliver `.peerState` whenever the peer's key may have changed (on its watch),
/// and once more after every local event (`.resourcesReady`, `.closeRequested`,
/// `.reconnectRequested`): the machines act on the peer's state only when it is fresh.
public enum XenbusEvent: Hashable, Sendable {
    /// The peer's `state` key now reads this; nil when the key (the peer) is gone.
    case peerState(XenbusState?)
    /// The work a `.prepare` action asked for is done.
    case resourcesReady
    /// Local unplug: close the device and do not reconnect.
    case closeRequested
    /// Undo a close request: a closed device may connect again.
    case reconnectRequested
    /// The driver refused the peer's keys at `.connect`. A backend announces Closing and
    /// stays there until the peer starts a new session (Initialising), so a peer that
    /// keeps its bad keys is not connected to again and again; a frontend closes for good.
    case connectRefused
    /// Frontend: the domain came back from a save (a restore, or the destination of a
    /// migration). Whatever it shared went with the old copy and the driver has dropped it
    /// unreleased, so the frontend starts a new session (Initialising) with whatever
    /// backend the store now names, as Linux's `xenbus_dev_resume` does. Backend: ignored.
    case resumed
}

/// What the caller must do, in order. The machines never act themselves.
public enum XenbusAction: Hashable, Sendable {
    /// Write this to our own `state` key.
    case publish(XenbusState)
    /// Frontend: allocate the ring, grant it, allocate the event channel and write
    /// `ring-ref`/`event-channel` (and features). Backend: finish hot-plug and write its
    /// features. Then deliver `.resourcesReady`.
    case prepare
    /// Frontend: read the backend's keys and start I/O. Backend: map the frontend's ring,
    /// bind its event channel and start serving.
    case connect
    /// Stop I/O and release what `.prepare`/`.connect` set up (idempotent).
    case disconnect
    /// Read the peer's `state` again and deliver it: the machine waits for a reading taken
    /// after the states it just published (the peer's key may not change to fire its watch).
    case readPeer
}

/// The frontend's half of the handshake in `io/xenbus.h`, as a pure state machine.
///
/// Initialising → (backend InitWait or later) prepare → Initialised → (backend Connected)
/// Connected. Tolerates a backend that skips InitWait, resets a backend left connected by a
/// previous incarnation of this frontend (Closing, Closed, then Initialising, as Linux's
/// `xenbus_reset_state` does), reconnects after a backend restart, and closes when the backend
/// closes or vanishes. It releases shared resources only once the backend has stopped using
/// them and cannot start again: it first withdraws them (publishes a state that no longer offers
/// its keys), then waits for a reading of the backend taken after that showing Closing or Closed
/// (or the backend gone). A reading is a round trip old when it is acted on, so the backend's
/// Closed seen before the withdrawal may come from a backend about to map the keys it read.
public struct XenbusFrontend: Hashable, Sendable {
    /// Where the frontend is in the handshake, finer than the XenbusState it publishes.
    ///
    /// - `initialising`: published Initialising, waiting for the backend's InitWait.
    /// - `resetting`: taking a backend left Connected by an earlier frontend through
    ///   Closing and Closed before starting again.
    /// - `preparing`: `.prepare` is running (ring, grants, event channel).
    /// - `prepared`: published Initialised, waiting for the backend's Connected.
    /// - `connected`: published Connected; I/O runs.
    /// - `closing`: withdrew its keys (published Closing), waiting for a reading taken after
    ///   that to show the backend Closing or Closed.
    /// - `closed`: published Closed; what was prepared is released (a prepare still
    ///   running is released when it finishes).
    public enum Phase: Hashable, Sendable {
        /// The phases in handshake order, each described on ``Phase``.
        case initialising, resetting, preparing, prepared, connected, closing, closed
    }

    /// Where the frontend is in the handshake.
    public private(set) var phase: Phase = .initialising
    /// The value of our `state` key as of the last `.publish` action.
    public private(set) var published: XenbusState = .initialising
    /// The peer's state as last observed.
    public private(set) var peer: XenbusState?
    /// True once a close was requested and not undone.
    public private(set) var closeWanted = false
    /// True while prepared resources are ours to release.
    public private(set) var holdsResources = false
    /// True once the backend's state key was seen and then vanished: the device is gone.
    public private(set) var peerGone = false
    private var prepareInFlight = false
    private var peerSeen = false
    /// Keys withdrawn and the backend not read since: its state as last read may predate
    /// its seeing the withdrawal.
    private var withdrawnUnread = false

    /// A machine that has published nothing yet; call ``start()`` first.
    public init() {}

    /// The first actions: announce Initialising.
    public mutating func start() -> [XenbusAction] { [.publish(.initialising)] }

    /// Feeds one event and returns the actions to perform, in order.
    public mutating func handle(_ event: XenbusEvent) -> [XenbusAction] {
        var actions: [XenbusAction] = []
        switch event {
        case .peerState(let s):
            let s = s == .unknown ? nil : s
            if s != nil { peerSeen = true } else if peerSeen { peerGone = true }
            peer = s
            withdrawnUnread = false
        case .resourcesReady:
            guard prepareInFlight else { break }
            prepareInFlight = false
            if phase == .preparing {
                holdsResources = true
                publish(.initialised, &actions)
                phase = .prepared
            } else {
                // Prepared for a session that ended meanwhile.
                actions.append(.disconnect)
            }
        case .closeRequested, .connectRefused:
            closeWanted = true
            switch phase {
            case .initialising, .resetting, .preparing:
                publish(.closed, &actions)
                phase = .closed
            case .prepared, .connected:
                // The backend may map our ring: ask it to close first, release on its answer
                // (the caller reads it after this local event).
                publish(.closing, &actions)
                phase = .closing
                withdrawnUnread = true
            case .closing, .closed:
                break
            }
        case .reconnectRequested:
            closeWanted = false
            if phase == .closed {
                publish(.initialising, &actions)
                phase = .initialising
            }
        case .resumed:
            // Nothing to release: the grants and ports are gone, the driver dropped them.
            holdsResources = false
            prepareInFlight = false
            // Our `state` key holds what the old session last wrote: write it again.
            published = .unknown
            if closeWanted || peerGone {
                publish(.closed, &actions)
                phase = .closed
            } else {
                publish(.initialising, &actions)
                phase = .initialising
            }
        }
        // Only a fresh reading of the peer drives peer transitions: after a local event the
        // stored reading may be stale, so the caller delivers `.peerState` again.
        if case .peerState = event { while step(&actions) {} }
        return actions
    }

    private mutating func publish(_ s: XenbusState, _ actions: inout [XenbusAction]) {
        if published != s { actions.append(.publish(s)) }
        published = s
    }

    private mutating func release(_ actions: inout [XenbusAction]) {
        if holdsResources { actions.append(.disconnect) }
        holdsResources = false
    }

    /// Answers a backend that closed while our keys were offered: withdraws them (Closing,
    /// as Linux's frontends answer it) and asks for the reading that may then release them
    /// (`.closing`); Closed follows the release, so Closed still says nothing is held.
    private mutating func withdraw(_ actions: inout [XenbusAction]) {
        publish(.closing, &actions)
        phase = .closing
        withdrawnUnread = true
        actions.append(.readPeer)
    }

    /// One transition driven by the peer's state; true if anything changed.
    private mutating func step(_ actions: inout [XenbusAction]) -> Bool {
        if peerGone {
            guard phase != .closed else { return false }
            release(&actions)
            publish(.closed, &actions)
            phase = .closed
            return true
        }
        // No backend yet: wait for the toolstack to create it.
        guard let p = peer else { return false }
        switch phase {
        case .initialising:
            switch p {
            case .initWait, .initialised:
                // A prepare still running from an aborted session serves this one.
                if !prepareInFlight { actions.append(.prepare) }
                prepareInFlight = true
                phase = .preparing
                return true
            case .connected, .reconfiguring, .reconfigured:
                // A backend still connected to an earlier incarnation of us: reset it first.
                publish(.closing, &actions)
                phase = .resetting
                return true
            case .closing:
                publish(.closed, &actions)
                phase = .resetting
                return true
            default:
                return false
            }
        case .resetting:
            if published == .closing, p == .closing || p == .closed {
                publish(.closed, &actions)
                return true
            }
            if published == .closed, p == .closed || p == .initWait || p == .initialising {
                publish(.initialising, &actions)
                phase = .initialising
                return true
            }
            return false
        case .preparing:
            guard p == .closing || p == .closed else { return false }
            publish(.closed, &actions)
            phase = .closed
            return true
        case .prepared:
            if p == .connected {
                actions.append(.connect)
                publish(.connected, &actions)
                phase = .connected
                return true
            }
            guard p == .closing || p == .closed else { return false }
            withdraw(&actions)
            return true
        case .connected:
            if p == .closing || p == .closed {
                withdraw(&actions)
                return true
            }
            if p == .initialising || p == .initWait {
                // The backend restarted and lost our session, but may have read our keys
                // before we saw it (and connect to them): withdrawn, which it answers with
                // Closing; released then, and a new session follows.
                withdraw(&actions)
                return true
            }
            return false
        case .closing:
            // Only the backend's own Closing/Closed, read after our withdrawal, says it no
            // longer maps our ring and will not (a restarted backend goes through Closing too
            // when it sees ours).
            guard !withdrawnUnread, p == .closing || p == .closed else { return false }
            release(&actions)
            publish(.closed, &actions)
            phase = .closed
            return true
        case .closed:
            // Not asked to stay closed: offer a new session once the backend is closed or
            // ready again (it answers our Initialising with InitWait).
            guard !closeWanted, !peerGone, p == .initWait || p == .initialising || p == .closed else { return false }
            publish(.initialising, &actions)
            phase = .initialising
            return true
        }
    }
}

/// The backend's half of the handshake, as a pure state machine.
///
/// Prepare (hot-plug, features) → InitWait → (frontend Initialised, or Connected if it skipped
/// Initialised) connect → Connected. A frontend already Connected when this backend starts
/// belongs to a previous backend (a restart): its ring keys are stale, so the backend waits
/// until it has seen the frontend below Connected (it resets on seeing our InitWait) instead
/// of connecting to them. Disconnects before it announces Closing, so a frontend
/// may free its ring once it sees Closing. A closed backend goes back to InitWait when the
/// frontend starts a new session (Initialising), unless a close was requested; a frontend
/// that vanishes closes the device for good.
public struct XenbusBackend: Hashable, Sendable {
    /// Where the backend is in the handshake, finer than the XenbusState it publishes.
    ///
    /// - `initialising`: not started.
    /// - `preparing`: published Initialising; `.prepare` (hot-plug, features) is running.
    /// - `ready`: published InitWait, waiting for the frontend's Initialised.
    /// - `connected`: published Connected; serving the rings.
    /// - `closing`: published Closing (disconnected first), waiting for the frontend's Closed.
    /// - `closed`: published Closed.
    public enum Phase: Hashable, Sendable {
        /// The phases in handshake order, each described on ``Phase``.
        case initialising, preparing, ready, connected, closing, closed
    }

    /// Where the backend is in the handshake.
    public private(set) var phase: Phase = .initialising
    /// The value of our `state` key as of the last `.publish` action.
    public private(set) var published: XenbusState = .initialising
    /// The frontend's state as last observed; nil before it is seen or once it is gone.
    public private(set) var peer: XenbusState?
    /// True once a close was requested and not undone.
    public private(set) var closeWanted = false
    /// True once the frontend's state key was seen and then vanished.
    public private(set) var peerGone = false
    /// True between a `.connect` action and the `.disconnect` that undoes it.
    public private(set) var isConnected = false
    private var prepared = false
    private var prepareInFlight = false
    private var peerSeen = false
    /// The frontend was seen in a state other than Connected since this backend started.
    private var peerSeenBelowConnected = false
    /// A connect was refused and the frontend has not started a new session since: hold
    /// Closing (not Closed, which an auto-reconnecting frontend answers with a new session
    /// on the same bad keys).
    public private(set) var refused = false

    /// A machine that has published nothing yet; call ``start()`` first.
    public init() {}

    /// The first actions: announce Initialising and prepare.
    public mutating func start() -> [XenbusAction] {
        prepareInFlight = true
        phase = .preparing
        return [.publish(.initialising), .prepare]
    }

    /// Feeds one event and returns the actions to perform, in order.
    public mutating func handle(_ event: XenbusEvent) -> [XenbusAction] {
        var actions: [XenbusAction] = []
        switch event {
        case .peerState(let s):
            let s = s == .unknown ? nil : s
            if s != nil { peerSeen = true } else if peerSeen { peerGone = true }
            if let s, s != .connected { peerSeenBelowConnected = true }
            peer = s
        case .resourcesReady:
            guard prepareInFlight else { break }
            prepareInFlight = false
            prepared = true
            if phase == .preparing {
                publish(.initWait, &actions)
                phase = .ready
            }
        case .closeRequested:
            closeWanted = true
            switch phase {
            case .connected:
                disconnect(&actions)
                publish(.closing, &actions)
                phase = .closing
            case .initialising, .preparing, .ready:
                publish(.closing, &actions)
                phase = .closing
            case .closing, .closed:
                break
            }
        case .reconnectRequested:
            closeWanted = false
            if phase == .closed && !peerGone { reopen(&actions) }
        case .connectRefused:
            guard phase == .connected else { break }
            disconnect(&actions)
            publish(.closing, &actions)
            phase = .closing
            refused = true
        case .resumed:
            break
        }
        // Only a fresh reading of the peer drives peer transitions: after a local event the
        // stored reading may be stale, so the caller delivers `.peerState` again.
        if case .peerState = event { while step(&actions) {} }
        return actions
    }

    private mutating func publish(_ s: XenbusState, _ actions: inout [XenbusAction]) {
        if published != s { actions.append(.publish(s)) }
        published = s
    }

    private mutating func disconnect(_ actions: inout [XenbusAction]) {
        if isConnected { actions.append(.disconnect) }
        isConnected = false
    }

    private mutating func reopen(_ actions: inout [XenbusAction]) {
        if prepared {
            publish(.initWait, &actions)
            phase = .ready
        } else {
            if !prepareInFlight { actions.append(.prepare) }
            prepareInFlight = true
            publish(.initialising, &actions)
            phase = .preparing
        }
    }

    private mutating func step(_ actions: inout [XenbusAction]) -> Bool {
        if peerGone {
            guard phase != .closed else { return false }
            disconnect(&actions)
            publish(.closed, &actions)
            phase = .closed
            return true
        }
        guard let p = peer else {
            // Closing with no frontend to wait for: done.
            guard phase == .closing else { return false }
            publish(.closed, &actions)
            phase = .closed
            return true
        }
        switch phase {
        case .initialising, .preparing:
            return false
        case .ready:
            switch p {
            case .initialised, .connected:
                // Connected from before we started: stale keys; it resets on our InitWait.
                guard p == .initialised || peerSeenBelowConnected else { return false }
                actions.append(.connect)
                isConnected = true
                publish(.connected, &actions)
                phase = .connected
                return true
            case .closing:
                publish(.closing, &actions)
                phase = .closing
                return true
            case .closed:
                publish(.closed, &actions)
                phase = .closed
                return true
            default:
                return false
            }
        case .connected:
            switch p {
            case .closing:
                disconnect(&actions)
                publish(.closing, &actions)
                phase = .closing
                return true
            case .closed:
                disconnect(&actions)
                publish(.closed, &actions)
                phase = .closed
                return true
            case .initialising:
                // The frontend restarted without closing: drop the old session.
                disconnect(&actions)
                publish(.initWait, &actions)
                phase = .ready
                return true
            default:
                return false
            }
        case .closing:
            if p == .closed && (!refused || closeWanted) {
                publish(.closed, &actions)
                phase = .closed
                return true
            }
            if p == .initialising && !closeWanted {
                refused = false
                reopen(&actions)
                return true
            }
            return false
        case .closed:
            guard !closeWanted, p == .initialising else { return false }
            reopen(&actions)
            return true
        }
    }
}
