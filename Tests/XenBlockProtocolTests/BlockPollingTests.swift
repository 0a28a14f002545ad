import Testing
import XenBlockProtocol

@Suite(.timeLimit(.minutes(5)))
struct BlockPollingTests {
    @Test func idleNeverPollsLongerThanBusy() {
        #expect(BlockPolling.idle <= BlockPolling.busy)
        #expect(BlockPolling.batch >= 1)
    }
}
