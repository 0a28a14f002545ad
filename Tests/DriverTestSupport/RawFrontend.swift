import TestSupport
import XenABI
import XenHypervisor
import XenRing

/// A hostile frontend that writes raw slots: pushes `slots` on `ring`, as many at a time
/// as it has room for (each written by `produce`), rings the backend when it asks, and
/// returns every response in the order they came.
///
/// It looks for responses (the ring, then the ports pending on `events` re-armed) between
/// `Task.sleep`s, never holding a cooperative-pool thread while the backend works; a
/// backend that stops answering for `minimumDeadline` makes it throw `TimedOut`.
public func exchange<Slot, Request, Response>(
    _ slots: [Slot], on ring: inout FrontRing<Request, Response>, events: any EventChannels, port: EventPort,
    produce: (inout FrontRing<Request, Response>, Slot) -> Void
) async throws -> [Response] {
    var queue = slots[...]
    var responses: [Response] = []
    while !queue.isEmpty || responses.count < slots.count {
        while let slot = queue.first, !ring.isFull {
            queue.removeFirst()
            produce(&ring, slot)
        }
        if ring.pushRequests() { try events.notify(port) }
        let answered = try await eventually(every: .milliseconds(1)) {
            if try ring.checkForResponses() > 0 { return true }
            while let p = try events.pending() { try events.unmask(p) }
            return false
        }
        guard answered else { throw TimedOut(seconds: minimumDeadline) }
        while let r = ring.nextResponse() { responses.append(r) }
    }
    return responses
}

/// `exchange` for slots that are whole requests, each copied in with `produce`.
public func exchange<Request, Response>(
    _ slots: [Request], on ring: inout FrontRing<Request, Response>, events: any EventChannels, port: EventPort
) async throws -> [Response] {
    try await exchange(slots, on: &ring, events: events, port: port) { $0.produce($1) }
}
