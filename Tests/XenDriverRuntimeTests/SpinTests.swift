import Testing
import XenDriverRuntime

@Suite(.timeLimit(.minutes(1)))
struct SpinTests {
    @Test func pollingStopsAtTheFirstYes() {
        var looks = 0
        let found = Spin.poll(for: .seconds(10)) {
            looks += 1
            return looks == 3
        }
        #expect(found && looks == 3)
    }

    @Test func pollingGivesUpAfterItsBudget() {
        let clock = ContinuousClock()
        var looks = 0
        let start = clock.now
        let found = Spin.poll(for: .milliseconds(2)) {
            looks += 1
            return false
        }
        #expect(!found && looks > 1)
        #expect(clock.now - start >= .milliseconds(2))
    }

    @Test func aZeroBudgetDoesNotLook() {
        var looks = 0
        #expect(!Spin.poll(for: .zero) { looks += 1; return true })
        #expect(looks == 0)
    }

    @Test func errorsComeThroughTyped() {
        struct Broken: Error {}
        #expect(throws: Broken.self) { try Spin.poll(for: .seconds(1)) { () throws(Broken) -> Bool in throw Broken() } }
    }
}
