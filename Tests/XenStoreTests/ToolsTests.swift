import Foundation
import TestSupport
import Testing
import XenABI
@testable import XenStore

/// Xen's own xenstore-* tools (libxenstore) against our server, unmodified.
@Suite(.timeLimit(.minutes(5)), .serialized, .enabled(if: xenstoreUtilsInstalled))
struct XenToolsTests {
    @Test func writeReadLsExistsRm() async throws {
        let s = try TestServer()
        var r = try await runTool("xenstore-write", ["/a/b", "hello", "/a/c", "world"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-read", ["/a/b"], socket: s.path)
        #expect(r.status == 0)
        #expect(r.stdout == "hello\n")
        r = try await runTool("xenstore-list", ["/a"], socket: s.path)
        #expect(r.stdout == "b\nc\n")
        r = try await runTool("xenstore-ls", ["/a"], socket: s.path)
        #expect(r.stdout.contains("b = \"hello\""))
        #expect(r.stdout.contains("c = \"world\""))
        r = try await runTool("xenstore-exists", ["/a/b"], socket: s.path)
        #expect(r.status == 0)
        r = try await runTool("xenstore-rm", ["/a/b"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-exists", ["/a/b"], socket: s.path)
        #expect(r.status != 0)
        r = try await runTool("xenstore-read", ["/a/b"], socket: s.path)
        #expect(r.status != 0)
        await s.stop()
    }

    @Test func chmodAndPermissionListing() async throws {
        let s = try TestServer()
        _ = try await runTool("xenstore-write", ["/p/q", "v"], socket: s.path)
        var r = try await runTool("xenstore-chmod", ["/p/q", "n3", "r4", "b5"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-ls", ["-p", "/p"], socket: s.path)
        #expect(r.stdout.contains("n3,r4,b5"), "\(r.stdout)")
        r = try await runTool("xenstore-chmod", ["/p/q", "x9"], socket: s.path)
        #expect(r.status != 0)
        await s.stop()
    }

    @Test func recursiveAndRelativeForms() async throws {
        let s = try TestServer()
        var r = try await runTool("xenstore-write", ["/r/a/b/c", "deep", "rel", "dom0-home"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        // A relative key resolves against dom0's home.
        r = try await runTool("xenstore-read", ["/local/domain/0/rel"], socket: s.path)
        #expect(r.stdout == "dom0-home\n")
        r = try await runTool("xenstore-ls", ["-f", "/r"], socket: s.path)
        #expect(r.stdout.contains("/r/a/b/c = \"deep\""), "\(r.stdout)")
        r = try await runTool("xenstore-chmod", ["-r", "/r", "n7", "r8"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-ls", ["-p", "/r/a/b"], socket: s.path)
        #expect(r.stdout.contains("n7,r8"), "\(r.stdout)")
        // -t removes the parents left empty.
        r = try await runTool("xenstore-rm", ["-t", "/r/a/b/c"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-exists", ["/r"], socket: s.path)
        #expect(r.status != 0)
        r = try await runTool("xenstore-exists", ["/local/domain/0/rel"], socket: s.path)
        #expect(r.status == 0)
        await s.stop()
    }

    @Test func longDirectoryListsInParts() async throws {
        let s = try TestServer()
        let names = (0..<300).map { "node-with-a-long-name-\($0)" }
        var args: [String] = []
        for n in names { args += ["/big/\(n)", "x"] }
        var r = try await runTool("xenstore-write", args, socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        r = try await runTool("xenstore-list", ["/big"], socket: s.path)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.split(separator: "\n").map(String.init) == names)
        await s.stop()
    }

    @Test func watchPrintsRegistrationAndChanges() async throws {
        let s = try TestServer()
        let c = try s.client()
        try await c.write("/w/x", "0")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/xenstore-watch")
        p.arguments = ["-n", "3", "/w"]
        p.environment = ["XENSTORED_PATH": s.path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        // The first line is the registration event; write until two more arrive.
        var lines: [String] = []
        // Read to the end on a thread of its own: the read blocks until the tool exits.
        async let reader = onThread { out.fileHandleForReading.readDataToEndOfFile() }
        var i = 0
        let exited = try await eventually(10, every: .milliseconds(20)) {
            guard p.isRunning else { return true }
            i += 1
            try await c.write("/w/x", "\(i)")
            return false
        }
        if !exited { p.terminate() }
        _ = await exitStatus(of: p)
        lines = String(decoding: await reader, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.first == "/w")
        #expect(lines.dropFirst().allSatisfy { $0 == "/w/x" })
        await s.stop()
    }
}
