import Testing
import XenDriverRuntime

@Suite(.timeLimit(.minutes(5)))
struct SpinTests {
    @Test func pollingStopsAtTheFirstYes() {
        var looks = 0
        let found = Spin.poll(for: .seconds(10)) {
            looks += 1
            return looks == 3
        }
        #expect(found && looks == 3)
    }

    /// It ends by itself: at its budget, or earlier if the thread was preempted (which
    /// on a busy machine it may be, so only the end is asserted, not when).
    @Test func pollingGivesUpWithoutAYes() {
        var looks = 0
        let found = Spin.poll(for: .milliseconds(2)) {
            looks += 1
            return false
        }
        #expect(!found && looks >= 1)
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
