import Testing
import XenABI
@testable import XenBus

/// Both machines wired through a model of the store, explored exhaustively.
///
/// Each side observes the other's *current* state key at any time (watch events may
/// coalesce), finishes its `.prepare` work at any time, and up to `budget` disruptions
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
        for a in actions {
            switch a {
            case .publish(let s): beKey = s
            case .prepare:
                if bePrepareOutstanding { throw Violation(description: "backend prepared twice") }
                bePrepareOutstanding = true
            case .connect:
                if beConnected { throw Violation(description: "backend connected twice") }
                guard feAlive, feHasRing, feKey == .initialised || feKey == .connected else {
                    throw Violation(description: "backend connected to no ring")
                }
                beConnected = true
                beMapsCurrentRing = true
            case .disconnect:
                beConnected = false
                beMapsCurrentRing = false
            }
        }
    }

    /// The ordinary steps; nil when not enabled.
    func ordinary() throws -> [(String, World)] {
        var out: [(String, World)] = []
        if feAlive {
            var w = self
            try w.applyFE(w.fe.handle(.peerState(beAlive ? beKey : nil)))
            out.append(("fe sees \(w.fe.peer.map { "\($0)" } ?? "-") -> \(w.feKey.map { "\($0)" } ?? "-")", w))
            if fePrepareOutstanding {
                var w = self
                if w.feHasRing { throw Violation(description: "frontend allocated a second ring") }
                w.fePrepareOutstanding = false
                w.feHasRing = true
                try w.applyFE(w.fe.handle(.resourcesReady))
                out.append(("fe ready -> \(w.feKey.map { "\($0)" } ?? "-")", w))
            }
        }
        if beAlive {
            var w = self
            try w.applyBE(w.be.handle(.peerState(feAlive ? feKey : nil)))
            out.append(("be sees \(w.be.peer.map { "\($0)" } ?? "-") -> \(w.beKey.map { "\($0)" } ?? "-")", w))
            if bePrepareOutstanding {
                var w = self
                w.bePrepareOutstanding = false
                try w.applyBE(w.be.handle(.resourcesReady))
                out.append(("be ready -> \(w.beKey.map { "\($0)" } ?? "-")", w))
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
                w.feHasRing = false  // the old ring died with the old frontend
                w.feConnected = false
                w.beMapsCurrentRing = false
                try w.applyFE(w.fe.start())
            case .beRestart:
                guard beAlive else { continue }
                w.be = XenbusBackend()
                w.bePrepareOutstanding = false
                w.beConnected = false
                w.beMapsCurrentRing = false
                try w.applyBE(w.be.start())
            case .feClose:
                guard feAlive else { continue }
                try w.applyFE(w.fe.handle(.closeRequested))
            case .beClose:
                guard beAlive else { continue }
                try w.applyBE(w.be.handle(.closeRequested))
            case .feReconnect:
                guard feAlive, fe.closeWanted else { continue }
                try w.applyFE(w.fe.handle(.reconnectRequested))
            case .beReconnect:
                guard beAlive, be.closeWanted else { continue }
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
