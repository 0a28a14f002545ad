import Testing
import XenBlockProtocol

@Suite(.timeLimit(.minutes(5)))
struct BlockPollingTests {
    @Test func aSparedWakeUpIsWorthSomeSpinning() {
        #expect(BlockPolling.wakeUpWorth > .zero)
        #expect(BlockPolling.batch >= 1)
    }
}
