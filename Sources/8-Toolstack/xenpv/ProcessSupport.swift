import ArgumentParser
import Dispatch
import Foundation
import Glibc
import Logging
import XenHypervisor
import XenSimulatorClient

/// Shared by the three process commands (`hypervisor`, `backend`, `guest`).
enum ProcessSupport {
    /// Logs to standard error at `level` (once per process).
    static func bootstrapLogging(verbose: Bool) -> Logger {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = verbose ? .debug : .notice
            return h
        }
        return Logger(label: "xenpv")
    }

    /// Blocks SIGINT and SIGTERM in this thread and every thread started
    /// after, so `waitForTermination` can take them with `sigwait`.
    static func blockTerminationSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits for SIGINT or SIGTERM (blocked beforehand).
    @discardableResult
    static func waitForTermination() -> Int32 {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        var sig: Int32 = 0
        sigwait(&set, &sig)
        return sig
    }

    /// Waits for SIGINT or SIGTERM through handlers that write to a pipe: unlike
    /// `waitForTermination`, right even when threads already run with the signals
    /// unblocked (an async command's pool threads). Returns the signal.
    static func waitForTerminationSignal() -> Int32 {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return waitForTermination() }
        terminationPipe = fds[1]
        for s in [SIGINT, SIGTERM] {
            signal(s) { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = write(terminationPipe, &byte, 1)  // async-signal-safe
            }
        }
        var byte: UInt8 = 0
        while read(fds[0], &byte, 1) < 0 && errno == EINTR {}
        return Int32(byte)
    }

    /// Joins the daemon, turning its errors into messages a person can act on.
    static func join(_ socket: String, as request: DomainRequest) throws -> RemoteHypervisor {
        do {
            return try RemoteHypervisor(socketPath: socket, as: request)
        } catch {
            throw ValidationError("cannot join the hypervisor at \(socket): \(error)")
        }
    }

    /// Runs async work from a synchronous command; the main thread waits.
    static func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { box.set(.success(try await body())) } catch { box.set(.failure(error)) }
            done.signal()
        }
        done.wait()
        return try box.get()
    }
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    // @unchecked: written once before the semaphore signals, read after.
    private var result: Result<T, any Error>?
    func set(_ r: Result<T, any Error>) { result = r }
    func get() throws -> T { try result!.get() }
}

/// The write end of `waitForTerminationSignal`'s pipe, for its signal handlers.
nonisolated(unsafe) private var terminationPipe: Int32 = -1

/// A line on standard output, flushed (tests and people read it as it comes).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
