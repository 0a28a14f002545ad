import Testing
import XenBlockProtocol

@Suite(.timeLimit(.minutes(5)))
struct BlockPollingTests {
    @Test func aSparedWakeUpIsWorthSomeSpinning() {
        #expect(BlockPolling.wakeUpWorth > .zero)
        #expect(BlockPolling.frontendBatch >= 1)
        #expect(BlockPolling.backendBatch >= 1)
    }
}
