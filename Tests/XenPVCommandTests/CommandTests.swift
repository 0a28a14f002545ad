import Foundation
import TestSupport
import Testing

/// The `xenpv` executable as a user runs it (`swift test` builds it first).
@Suite(.timeLimit(.minutes(5)))
struct CommandTests {
    static let binary: URL = {
        // The test bundle sits beside the executables in the build folder.
        var dir = Bundle.main.bundleURL
        while dir.path != "/", !FileManager.default.fileExists(atPath: dir.appendingPathComponent("xenpv").path) {
            dir.deleteLastPathComponent()
        }
        return dir.appendingPathComponent("xenpv")
    }()

    struct Run {
        var status: Int32
        var output: String
    }

    /// Runs xenpv with `args` and awaits it (see `exitStatus(of:within:)`: a waiting
    /// test must not hold a cooperative-pool thread); past `timeout` seconds it is killed
    /// and this throws `TimedOut`.
    @discardableResult
    static func xenpv(_ args: [String], environment: [String: String] = [:], timeout: Double = 30) async throws -> Run {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        guard let status = await exitStatus(of: p, within: timeout) else { throw TimedOut(seconds: timeout) }
        let output = await onThread { out.fileHandleForReading.readDataToEndOfFile() }
        return Run(status: status, output: String(decoding: output, as: UTF8.self))
    }

    @Test func storeCommandsAndListAgainstOurXenstored() async throws {
        let socket = "/tmp/xpv-cli-\(getpid()).sock"
        let daemon = Process()
        daemon.executableURL = Self.binary
        daemon.arguments = ["xenstored", "--socket", socket]
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        // However the test ends, the daemon is stopped and awaited (never blocking a pool thread).
        try await withCleanup {
            _ = await eventually(10, every: .milliseconds(20)) { FileManager.default.fileExists(atPath: socket) }

            let fe = "/local/domain/5/device/vbd/51712"
            let be = "/local/domain/0/backend/vbd/5/51712"
            #expect(try await Self.xenpv(["xenstore", "write", "--store", socket, fe + "/state", "3", fe + "/backend", be,
                                    fe + "/backend-id", "0", be + "/state", "2"]).status == 0)
            #expect(try await Self.xenpv(["xenstore", "read", "--store", socket, fe + "/backend"]).output == be + "\n")
            let list = try await Self.xenpv(["list", "--devices", "--store", socket])
            #expect(list.status == 0)
            #expect(list.output.contains("vbd/51712") && list.output.contains("Initialised") && list.output.contains("InitWait"))
            // The same socket through the environment variable Xen's tools use.
            let ls = try await Self.xenpv(["xenstore", "ls", "/local/domain/5"], environment: ["XENSTORED_PATH": socket])
            #expect(ls.output.contains("backend-id = \"0\""))
            // top shows what a backend published under xenpv-stats.
            let stats = "/local/domain/0/xenpv-stats/vbd/5/51712"
            #expect(try await Self.xenpv(["xenstore", "write", "--store", socket, stats,
                                    "requests=1000 bytes=4096000 notifies=10 sleeps=5 ring_fill=3 ring_size=32 dropped=0"]).status == 0)
            let top = try await Self.xenpv(["top", "--store", socket, "--count", "1", "--interval", "0.2"])
            #expect(top.status == 0 && top.output.contains("dom0 vbd 5/51712") && top.output.contains("3/32"), "\(top.output)")
            #expect(try await Self.xenpv(["xenstore", "rm", "--store", socket, "/local/domain/5"]).status == 0)
            #expect(try await Self.xenpv(["xenstore", "read", "--store", socket, fe + "/state"]).status != 0)

            // SIGTERM stops it cleanly and removes the socket.
            daemon.terminate()
            #expect(await exitStatus(of: daemon) == 0)
            #expect(!FileManager.default.fileExists(atPath: socket))
        } cleanup: {
            if daemon.isRunning { daemon.terminate() }
            _ = await exitStatus(of: daemon)
        }
    }

    @Test func mistakesGetClearErrors() async throws {
        let missing = try await Self.xenpv(["list", "--store", "/nonexistent/socket"])
        #expect(missing.status == 1)
        #expect(missing.output.contains("no xenstored socket at /nonexistent/socket"))
        let badSize = try await Self.xenpv(["bench", "net", "--packet-size", "70000"])
        #expect(badSize.status != 0 && badSize.output.contains("--packet-size must be"))
        // These trapped (an empty sample array, a negative range) instead of saying why.
        let noEvents = try await Self.xenpv(["bench", "xenstore", "--events", "0", "--transaction-nodes", "0"])
        #expect(noEvents.status != 0 && noEvents.output.contains("events must be at least 1"), "\(noEvents.output)")
        let negativeIdle = try await Self.xenpv(["bench", "xenstore", "--idle=-1", "--transaction-nodes", "0"])
        #expect(negativeIdle.status != 0 && negativeIdle.output.contains("idle connections must not be negative"), "\(negativeIdle.output)")
        for command in ["destroy", "shutdown"] {
            let badTimeout = try await Self.xenpv([command, "dom", "--timeout=-1"])
            #expect(badTimeout.status != 0 && badTimeout.output.contains("--timeout must be more than 0"), "\(badTimeout.output)")
        }
        // What runs beside a disk job is checked before the guest joins anything.
        let disk = ["guest", "disk", "write", "--connect", "/"]
        let echoAndTap = try await Self.xenpv(disk + ["--echo", "--netns", "xenpv-none"])
        #expect(echoAndTap.status != 0 && echoAndTap.output.contains("--echo and --netns both use the vif"), "\(echoAndTap.output)")
        let badRate = try await Self.xenpv(disk + ["--dirty-rate=-5"])
        #expect(badRate.status != 0 && badRate.output.contains("--dirty-rate must be 0 or more"), "\(badRate.output)")
        let badPages = try await Self.xenpv(disk + ["--dirty-rate", "100", "--dirty-pages", "4096"])
        #expect(badPages.status != 0 && badPages.output.contains("--dirty-pages must be 1 to --frames - 1"), "\(badPages.output)")
        let echoServe = try await Self.xenpv(["guest", "disk", "serve", "--nbd", "unix:/tmp/none", "--connect", "/", "--echo"])
        #expect(echoServe.status != 0 && echoServe.output.contains("go with write, read, verify or write-verify"), "\(echoServe.output)")
        let badDemo = try await Self.xenpv(["demo", "--packets", "0"])
        #expect(badDemo.status != 0 && badDemo.output.contains("--packets must be positive"))
        // The world is chosen at start-up; without /dev/xen, `xen` is a clear error.
        if access("/dev/xen/evtchn", R_OK) != 0 {
            let xen = try await Self.xenpv(["backend", "--hypervisor", "xen"])
            #expect(xen.status == 1 && xen.output.contains("cannot open the store through libxenstore"))
            let noSocket = try await Self.xenpv(["backend", "--hypervisor", "simulated"])
            #expect(noSocket.status != 0 && noSocket.output.contains("--connect PATH is needed"))
        }
        let help = try await Self.xenpv(["--help"])
        for command in ["demo", "list", "xenstore", "xenstored", "bench"] { #expect(help.output.contains(command)) }
    }

    @Test func demoRunsAsTheReadmeSays() async throws {
        let run = try await Self.xenpv(["demo", "--packets", "500"], timeout: 60)
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("Demo finished: every check passed."))
    }
}
