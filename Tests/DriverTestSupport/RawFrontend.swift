import TestSupport
import XenABI
import XenHypervisor
import XenRing

/// A hostile frontend that writes raw slots: pushes `slots` on `ring`, as many at a time
/// as it has room for (each written by `produce`), rings the backend when it asks, and
/// returns every response in the order they came.
///
/// It waits for responses on `events` (a bounded poll on its descriptor, then the port
/// re-armed), so it holds the calling thread meanwhile; a backend that stops answering
/// for `minimumDeadline` makes it throw `TimedOut`.
public func exchange<Slot, Request, Response>(
    _ slots: [Slot], on ring: inout FrontRing<Request, Response>, events: any EventChannels, port: EventPort,
    produce: (inout FrontRing<Request, Response>, Slot) -> Void
) throws -> [Response] {
    var queue = slots[...]
    var responses: [Response] = []
    while !queue.isEmpty || responses.count < slots.count {
        while let slot = queue.first, !ring.isFull {
            queue.removeFirst()
            produce(&ring, slot)
        }
        if ring.pushRequests() { try events.notify(port) }
        let answered = try eventuallyBlocking(every: .zero) {
            if try ring.checkForResponses() > 0 { return true }
            _ = try events.wait(timeoutMilliseconds: 5)
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
) throws -> [Response] {
    try exchange(slots, on: &ring, events: events, port: port) { $0.produce($1) }
}
