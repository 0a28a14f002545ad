import CXen
import Testing
import XenABI
import XenRing

/// A frontend that polls for responses can ask not to be notified of them, and asks again
/// with its final check before it sleeps.
@Suite(.timeLimit(.minutes(5)))
struct PostponedNotificationTests {
    @Test func aPostponedFrontendIsNotNotifiedUntilItsFinalCheck() throws {
        let page = TestPages(count: 1)
        var front = try BlkFront(initializing: page.memory)
        var back = try BlkBack(attachingTo: page.memory)
        // Armed as a sleeping frontend leaves it: the next response notifies.
        let waiting = try front.finalCheckForResponses()
        #expect(!waiting)
        front.postponeResponseNotifications()
        for round in 0..<40 {  // past the ring's size: the indices wrap round the slots
            // A whole ring's worth in flight: no response to any of them notifies.
            let n = round % 2 == 0 ? 1 : 32
            for i in 0..<n { var r = blkif_request(); r.id = UInt64(i); front.produce(r) }
            _ = front.pushRequests()
            let requests = try back.checkForRequests()
            #expect(requests == UInt32(n))
            var notified = false
            while let request = back.nextRequest() {
                var response = blkif_response()
                response.id = request.id
                back.produce(response)
                notified = back.pushResponses() || notified
            }
            #expect(!notified, "round \(round): a postponed frontend was notified")
            let responses = try front.checkForResponses()
            #expect(responses == UInt32(n))
            while front.nextResponse() != nil {}
            front.postponeResponseNotifications()
        }
        // The final check asks again: the next response notifies.
        let waitingAtLast = try front.finalCheckForResponses()
        #expect(!waitingAtLast)
        var r = blkif_request(); r.id = 7; front.produce(r)
        _ = front.pushRequests()
        let last = try back.checkForRequests()
        #expect(last == 1)
        var response = blkif_response()
        response.id = back.nextRequest()?.id ?? 0
        back.produce(response)
        let notified = back.pushResponses()
        #expect(notified, "the re-armed frontend was not notified")
    }
}
