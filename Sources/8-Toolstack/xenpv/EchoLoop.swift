import ArgumentParser
import Atomics
import Foundation
import Glibc
import Logging
import XenLocks

/// Stop-and-wait through an echoing backend (`xenpv backend` without --nic): each frame
/// is sent, resent every 0.5 s until it comes back, and must come back intact; a late
/// echo of an older frame (after a resend) is fine if intact, anything else is an error.
/// `xenpv guest net-echo` runs it on its main thread, `xenpv guest disk --echo` on a
/// thread of its own beside the disk job (``EchoThread``). It blocks its thread.
struct EchoLoop: Sendable {
    /// What one run did.
    struct Outcome: Sendable {
        /// Frames that came back intact.
        var echoed = 0
        /// Sends repeated because no echo came in time (a backend away during a migration).
        var resent = 0
    }

    let net: GuestNet
    let size: Int
    /// Frames to send; nil: until `stopped`.
    let count: Int?
    let intervalMs: Int
    let deadline: Date
    let logger: Logger
    /// Whether to print `echoed N/M` after each frame.
    let progress: Bool
    /// Whether to send no further frame (the frame on its way is still waited for).
    let stopped: @Sendable () -> Bool

    func run() throws -> Outcome {
        var outcome = Outcome()
        var seq: UInt32 = 0
        while count.map({ outcome.echoed < $0 }) ?? true, !stopped() {
            let frame = GuestNet.frame(seq, size: size)
            var echoed = false
            while !echoed {
                guard Date() < deadline else {
                    throw ValidationError("echo timed out at frame \(seq)" + (count.map { " of \($0)" } ?? ""))
                }
                // A send refused while the backend is away is retried like a lost echo.
                do { try net.send(frame) } catch { logger.info("send: \(error)") }
                let wait = Date().addingTimeInterval(0.5)
                while !echoed && Date() < wait {
                    for got in net.take() {
                        if got == frame { echoed = true } else if got.count >= 18, got[12] == 0x88, got[13] == 0xB5 {
                            // An older frame's late echo (after a resend): fine if intact.
                            let s = got[14..<18].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                            guard s < seq, got == GuestNet.frame(s, size: got.count) else {
                                throw ValidationError("frame \(seq): a corrupted echo came back")
                            }
                        }
                    }
                    if !echoed { usleep(500) }
                }
                if !echoed { outcome.resent += 1 }
            }
            outcome.echoed += 1
            seq &+= 1
            if progress { say("echoed \(outcome.echoed)/\(count.map(String.init) ?? "?")") }
            if intervalMs > 0 { usleep(UInt32(min(intervalMs, 60_000) * 1000)) }
        }
        return outcome
    }
}

/// An ``EchoLoop`` until told to stop, on a dedicated thread (it blocks, so never on the
/// cooperative pool): `xenpv guest disk --echo`'s NIC traffic beside its disk job.
final class EchoThread: @unchecked Sendable {
    // @unchecked: `result` is written once by the thread before `done` signals and read after.
    private let stop = ManagedAtomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<EchoLoop.Outcome, any Error>?

    /// Starts echoing `size`-byte frames through `net`, `intervalMs` apart, until
    /// ``finish()`` or a shutdown request; it fails at `deadline`.
    init(_ net: GuestNet, size: Int, intervalMs: Int, deadline: Date, logger: Logger) {
        // acquiring/releasing: `finish()`'s store is seen by the loop's next check.
        let loop = EchoLoop(net: net, size: size, count: nil, intervalMs: intervalMs, deadline: deadline, logger: logger,
                            progress: false) { [stop] in stop.load(ordering: .acquiring) || net.shutdown.request != nil }
        startDetachedThread(named: "guest-echo") { [self] in
            result = Result { try loop.run() }
            done.signal()
        }
    }

    /// Stops the loop after the frame on its way and waits for it; what it did, or why it failed.
    func finish() throws -> EchoLoop.Outcome {
        stop.store(true, ordering: .releasing)
        done.wait()
        guard let result else { throw CommandError("the echo thread ended without a result") }
        return try result.get()
    }
}
