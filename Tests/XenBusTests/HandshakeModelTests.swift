import Testing
import XenABI
@testable import XenBus

/// Both machines wired through a model of the store, explored exhaustively.
///
/// Each side observes the other's *current* state key at any time (watch events may
/// coalesce), finishes its `.prepare` work at any time, maps the frontend's ring some time
/// after it decided to connect (the endpoint reads the keys and maps in the driver's
/// `connect`, while the frontend goes on), and up to `budget` disruptions
/// happen anywhere: a restart of either side, a close request on either side, a reconnect
/// request after a close, or one side vanishing. Every reachable state must be free of
/// safety violations; every state where nothing more can happen without a disruption must be
/// Connected on both sides (when nobody wants the device closed) or cleanly closed; and no
/// cycle of ordinary steps exists (no livelock).
struct World: Hashable {
    var fe = XenbusFrontend()
    var be = XenbusBackend()
    var feKey: XenbusState? = nil
    var beKey: XenbusState? = nil
    var feAlive = true
    var beAlive = true
    var fePrepareOutstanding = false
    var bePrepareOutstanding = false
    /// The frontend holds a granted ring and event channel.
    var feHasRing = false
    var feConnected = false
    var beConnected = false
    /// The backend maps the frontend's *current* ring (not one from before a restart).
    var beMapsCurrentRing = false
    /// The backend's `.connect` runs: it maps whatever ring the frontend grants when it
    /// gets there (the keys it reads are the last written); the actions after it in that
    /// batch wait for the outcome, as the endpoint publishes Connected only after it.
    var beConnecting: [XenbusAction]?
    /// A reading of the peer's key taken and not yet acted on.
    var feReading: Reading?
    var beReading: Reading?

    /// What a read of the peer's key returned (nil: the key is gone).
    struct Reading: Hashable {
        var value: XenbusState?
    }
    var disruptionsLeft: Int
    var used: Set<Disruption> = []

    enum Disruption: Hashable, CaseIterable {
        case feRestart, beRestart, feClose, beClose, feReconnect, beReconnect, feVanish, beVanish
    }

    struct Violation: Error, CustomStringConvertible {
        var description: String
    }

    init(budget: Int) {
        disruptionsLeft = budget
        try! applyFE(fe.start())
        try! applyBE(be.start())
    }

    mutating func applyFE(_ actions: [XenbusAction]) throws {
        for a in actions {
            switch a {
            case .publish(let s): feKey = s
            case .prepare:
                if fePrepareOutstanding { throw Violation(description: "frontend prepared twice") }
                fePrepareOutstanding = true
            case .connect:
                if feConnected { throw Violation(description: "frontend connected twice") }
                if !feHasRing { throw Violation(description: "frontend connected without a ring") }
                feConnected = true
            case .readPeer:
                break  // readings are taken at any time
            case .disconnect:
                if beAlive && beConnected && beMapsCurrentRing {
                    throw Violation(description: "frontend freed a ring the backend still maps")
                }
                feHasRing = false
                feConnected = false
            }
        }
    }

    mutating func applyBE(_ actions: [XenbusAction]) throws {
        for (i, a) in actions.enumerated() {
            switch a {
            case .publish(let s): beKey = s
            case .prepare:
                if bePrepareOutstanding { throw Violation(description: "backend prepared twice") }
                bePrepareOutstanding = true
            case .connect:
                if beConnected || beConnecting != nil { throw Violation(description: "backend connected twice") }
                beConnecting = Array(actions[(i + 1)...])
                return
            case .readPeer:
                break
            case .disconnect:
                beConnected = false
                beMapsCurrentRing = false
            }
        }
    }

    /// Whether acting on `reading` now changes anything: a reading that does not is no step
    /// (nor is it one later, as this side does nothing else while it holds a reading).
    func changesFE(_ reading: XenbusState?) throws -> Bool {
        var w = self
        try w.applyFE(w.fe.handle(.peerState(reading)))
        return w != self
    }

    func changesBE(_ reading: XenbusState?) throws -> Bool {
        var w = self
        try w.applyBE(w.be.handle(.peerState(reading)))
        return w != self
    }

    /// The ordinary steps; nil when not enabled.
    ///
    /// An endpoint reads the peer's key, then acts on that reading: the peer may have moved
    /// on meanwhile (a watch then fires again), so a reading is taken in one step and
    /// applied in a later one. A `.prepare` reads the peer while it runs and acts on that
    /// reading before `.resourcesReady` and again after it (the endpoint hides that round
    /// trip behind the hook).
    func ordinary() throws -> [(String, World)] {
        var out: [(String, World)] = []
        func name(_ s: XenbusState?) -> String { s.map { "\($0)" } ?? "-" }
        if feAlive {
            let now = beAlive ? beKey : nil
            if let reading = feReading {
                var w = self
                w.feReading = nil
                try w.applyFE(w.fe.handle(.peerState(reading.value)))
                out.append(("fe acts on \(name(reading.value)) -> \(name(w.feKey))", w))
            } else if try changesFE(now) {
                var w = self
                w.feReading = Reading(value: now)
                out.append(("fe reads \(name(now))", w))
            }
            if fePrepareOutstanding {
                var w = self
                if w.feHasRing { throw Violation(description: "frontend allocated a second ring") }
                w.fePrepareOutstanding = false
                w.feHasRing = true
                w.feReading = nil
                let reading = (feReading ?? Reading(value: now)).value
                try w.applyFE(w.fe.handle(.peerState(reading)) + w.fe.handle(.resourcesReady) + w.fe.handle(.peerState(reading)))
                out.append(("fe ready -> \(name(w.feKey))", w))
            }
        }
        // Its endpoint handles nothing else while the driver's connect runs.
        if beAlive && beConnecting == nil {
            let now = feAlive ? feKey : nil
            if let reading = beReading {
                var w = self
                w.beReading = nil
                try w.applyBE(w.be.handle(.peerState(reading.value)))
                out.append(("be acts on \(name(reading.value)) -> \(name(w.beKey))", w))
            } else if try changesBE(now) {
                var w = self
                w.beReading = Reading(value: now)
                out.append(("be reads \(name(now))", w))
            }
            if bePrepareOutstanding {
                var w = self
                w.bePrepareOutstanding = false
                w.beReading = nil
                let reading = (beReading ?? Reading(value: now)).value
                try w.applyBE(w.be.handle(.peerState(reading)) + w.be.handle(.resourcesReady) + w.be.handle(.peerState(reading)))
                out.append(("be ready -> \(name(w.beKey))", w))
            }
        }
        if beAlive, let after = beConnecting {
            // The ring the keys name is mapped if the frontend still grants it; else the
            // driver's connect fails and the machine hears `.connectRefused`.
            var w = self
            w.beConnecting = nil
            if feAlive && feHasRing {
                w.beConnected = true
                w.beMapsCurrentRing = true
                try w.applyBE(after)
                out.append(("be maps the ring -> \(name(w.beKey))", w))
            } else {
                // As the endpoint does: the peer read, the refusal, the reading again.
                let peer = feAlive ? feKey : nil
                try w.applyBE(w.be.handle(.peerState(peer)) + w.be.handle(.connectRefused) + w.be.handle(.peerState(peer)))
                out.append(("be finds no ring -> \(name(w.beKey))", w))
            }
        }
        return out
    }

    func disruptive() throws -> [World] {
        guard disruptionsLeft > 0 else { return [] }
        var out: [World] = []
        for d in Disruption.allCases where !used.contains(d) {
          do {
            var w = self
            w.disruptionsLeft -= 1
            w.used.insert(d)
            switch d {
            case .feRestart:
                guard feAlive else { continue }
                w.fe = XenbusFrontend()
                w.fePrepareOutstanding = false
                w.feReading = nil
                w.feHasRing = false  // the old ring died with the old frontend
                w.feConnected = false
                w.beMapsCurrentRing = false
                try w.applyFE(w.fe.start())
            case .beRestart:
                guard beAlive else { continue }
                w.be = XenbusBackend()
                w.bePrepareOutstanding = false
                w.beReading = nil
                w.beConnected = false
                w.beMapsCurrentRing = false
                w.beConnecting = nil
                try w.applyBE(w.be.start())
            case .feClose:
                // Local events wait for the endpoint to finish acting on a reading.
                guard feAlive, feReading == nil else { continue }
                try w.applyFE(w.fe.handle(.closeRequested))
            case .beClose:
                // Taken by the endpoint once its connect returned and its reading was acted on.
                guard beAlive, beConnecting == nil, beReading == nil else { continue }
                try w.applyBE(w.be.handle(.closeRequested))
            case .feReconnect:
                guard feAlive, fe.closeWanted, feReading == nil else { continue }
                try w.applyFE(w.fe.handle(.reconnectRequested))
            case .beReconnect:
                guard beAlive, be.closeWanted, beConnecting == nil, beReading == nil else { continue }
                try w.applyBE(w.be.handle(.reconnectRequested))
            case .feVanish:
                guard feAlive, beAlive else { continue }
                w.feAlive = false
                w.feKey = nil
                w.feHasRing = false
                w.feConnected = false
                w.beMapsCurrentRing = false
            case .beVanish:
                guard beAlive, feAlive else { continue }
                w.beAlive = false
                w.beKey = nil
                w.beConnected = false
                w.beMapsCurrentRing = false
                w.beConnecting = nil
            }
            out.append(w)
          } catch let v as Violation { throw Violation(description: "\(v.description) on \(d)") }
        }
        return out
    }

    /// What a state where nothing ordinary can happen must look like.
    func checkSettled() throws {
        let closeWanted = (feAlive && fe.closeWanted) || (beAlive && be.closeWanted)
        if feAlive && beAlive && !closeWanted {
            guard feKey == .connected, beKey == .connected, feConnected, beConnected, beMapsCurrentRing else {
                throw Violation(description: "stuck: fe \(feKey.map { "\($0)" } ?? "-") be \(beKey.map { "\($0)" } ?? "-")")
            }
            return
        }
        // Cleanly closed: nothing mapped or held for the other side, closers published Closed.
        if beAlive && beConnected { throw Violation(description: "backend still connected after close") }
        if feAlive && (feHasRing || feConnected) { throw Violation(description: "frontend still holds its ring after close") }
        // A survivor that saw its peer vanish closes; one restarted after that still waits for one.
        if feAlive && (fe.closeWanted || fe.peerGone) && feKey != .closed { throw Violation(description: "frontend not Closed") }
        if beAlive && (be.closeWanted || be.peerGone) && beKey != .closed { throw Violation(description: "backend not Closed") }
        if beAlive && beKey == .connected { throw Violation(description: "backend left Connected") }
        if feAlive && feKey != .closed && feKey != .initialising {
            throw Violation(description: "frontend left in \(feKey.map { "\($0)" } ?? "-")")
        }
    }
}

@Suite(.timeLimit(.minutes(5)))
struct HandshakeModelTests {
    struct Result {
        var states = 0
        var settled = 0
        var connectedEnds = 0
        var closedEnds = 0
    }

    /// Depth-first over every interleaving; memoised on the whole world, with an on-stack set
    /// to find cycles of ordinary steps.
    func explore(budget: Int) throws -> Result {
        var result = Result()
        var done: Set<World> = []
        var onStack: Set<World> = []
        func visit(_ w: World, _ trail: [String]) throws {
            if done.contains(w) { return }
            if onStack.contains(w) { throw World.Violation(description: "livelock: \(trail)") }
            onStack.insert(w)
            defer {
                onStack.remove(w)
                done.insert(w)
            }
            result.states += 1
            let next: [(String, World)]
            let disrupted: [World]
            do {
                next = try w.ordinary().filter { $0.1 != w }
                disrupted = try w.disruptive()
                if next.isEmpty { try w.checkSettled() }
            } catch let v as World.Violation {
                throw World.Violation(description: "\(v.description) after \(trail)")
            }
            if next.isEmpty {
                result.settled += 1
                if w.feKey == .connected { result.connectedEnds += 1 } else { result.closedEnds += 1 }
            }
            for (label, n) in next { try visit(n, trail + [label]) }
            for n in disrupted { try visit(n, trail + ["!\(n.used.subtracting(w.used).first!)"]) }
        }
        try visit(World(budget: budget), [])
        return result
    }

    /// Restarts, closes, reconnects and vanishing of either side, each at most once, in any order.
    @Test func everyInterleavingWithoutDisruptionConnects() throws {
        let r = try explore(budget: 0)
        #expect(r.closedEnds == 0)
        #expect(r.connectedEnds >= 1)
        #expect(r.states > 10)
    }

    @Test func everyInterleavingWithEveryDisruptionOnceSettlesConnectedOrClosed() throws {
        let r = try explore(budget: 8)
        #expect(r.connectedEnds > 0)
        #expect(r.closedEnds > 0)
        #expect(r.states > 1000)
    }
}
