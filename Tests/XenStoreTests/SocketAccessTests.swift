import Foundation
import TestSupport
import Testing
import Logging
import XenABI
@testable import XenStore
@testable import XenStoreServer

/// Who may reach the dom0 socket, and what a flood of connections costs.
@Suite(.timeLimit(.minutes(5)), .serialized)
struct SocketAccessTests {
    /// Runs python3 as uid/gid 65534 with no supplementary groups: connects to `socket`,
    /// sends READ /probe, prints "REPLY <type>", "EOF" or "CONNECT <errno>". Awaits it
    /// (never blocking a pool thread), killed past 15 s (see `exitStatus(of:within:)`).
    func probeAsNobody(_ socket: String) async throws -> String {
        let script = """
        import socket, struct, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(sys.argv[1])
        except OSError as e:
            print("CONNECT", e.errno); sys.exit(0)
        body = b"/probe\\0"
        try:
            s.sendall(struct.pack("<IIII", 2, 1, 0, len(body)) + body)
            h = s.recv(16)
        except OSError as e:
            print("EOF"); sys.exit(0)
        print("REPLY", struct.unpack("<IIII", h)[0] if len(h) == 16 else "EOF")
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c", script, socket]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        _ = await exitStatus(of: p, within: 15)
        let output = await onThread { out.fileHandleForReading.readDataToEndOfFile() }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var canDropPrivileges: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")
    }

    @Test func theDom0SocketIs0600WhateverTheUmask() async throws {
        let old = umask(0)
        defer { umask(old) }
        let s = try TestServer()
        var st = stat()
        #expect(lstat(s.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        await s.stop()
    }

    @Test func anUntrustedLocalUserIsRefusedEvenIfTheSocketModeLetsItIn() async throws {
        guard canDropPrivileges else { return }
        let s = try TestServer()
        // A mistaken chmod opens the file; peer credentials still keep uid 65534 out.
        chmod(s.path, 0o666)
        let r = try await probeAsNobody(s.path)
        #expect(r == "EOF" || r == "REPLY EOF", "\(r)")
        // With the mode as made, the file itself refuses it.
        chmod(s.path, 0o600)
        #expect(try await probeAsNobody(s.path).hasPrefix("CONNECT"))
        let c = try s.client()
        try await c.write("/root/ok", "1")
        #expect(try await c.read("/root/ok") == "1")
        await s.stop()
    }

    @Test func aGroupGivenToTheServerIsTrusted() async throws {
        guard canDropPrivileges else { return }
        let path = "/tmp/xs-grp-\(UUID().uuidString.prefix(8)).sock"
        let server = XenStoreServer(socketPath: path, logger: quietLogger(), group: 65534)
        try server.start()
        try await withCleanup { () async throws in
            var st = stat()
            #expect(lstat(path, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o660 && st.st_gid == 65534)
            // READ /probe: ENOENT, an answer (XS_ERROR is 16).
            #expect(try await probeAsNobody(path) == "REPLY 16")
        } cleanup: {
            _ = await onThread { server.stop(timeout: minimumDeadline) }
        }
    }

    @Test func emptyAbstractAndRegularFilePathsAreRefusedAndNothingIsRemoved() throws {
        for bad in ["", "\0abstract"] {
            let server = XenStoreServer(socketPath: bad, logger: quietLogger())
            #expect(throws: XenStoreError.self) { try server.start() }
        }
        let file = "/tmp/xs-file-\(UUID().uuidString.prefix(8))"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
        defer { unlink(file) }
        let server = XenStoreServer(socketPath: file, logger: quietLogger())
        #expect(throws: XenStoreError.self) { try server.start() }
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
    }

    @Test func acceptFailingWithEMFILEIsNotSpunOnAndServiceResumes() async throws {
        let s = try TestServer()
        let failing = LockedFlag()
        failing.set(true)
        // When each failing accept was called, on the loop thread, by the clock the server
        // times its pause with.
        let calls = LockedTimes()
        await s.server.setAcceptForTesting { fd in
            if failing.get() {
                calls.append(DispatchTime.now().uptimeNanoseconds)
                errno = EMFILE
                return -1
            }
            return accept(fd, nil, nil)
        }
        // A client waits in the backlog while accept "has no descriptors": the listener stays
        // readable, so only the server's pause keeps the loop from calling accept again at once.
        let waiting = try RawConnection(s.path)
        let tries = 4
        #expect(await eventually { calls.count >= tries }, "accept was tried \(calls.count) times")
        failing.set(false)
        // Each failing accept pauses the listeners for `acceptPauseNanoseconds` (no connection
        // closes here to end a pause early), so consecutive tries are at least that far apart
        // however the loop thread is scheduled: a slower loop only spaces them further. A
        // loop that spun on the listener would try again within microseconds.
        let times = calls.values
        for (earlier, later) in zip(times, times.dropFirst()) {
            #expect(later - earlier >= XenStoreServer.acceptPauseNanoseconds,
                    "accept tried again \(later - earlier) ns after failing: \(times)")
        }
        #expect(try await waiting.write("/after-emfile", "ok").text == "OK")
        await s.stop()
    }

    @Test func connectionsPerUserAreCappedWithOthersServed() async throws {
        var q = XenStoreQuotas()
        q.connectionsPerUser = 5
        let s = try TestServer(quotas: q)
        let kept = try (0..<5).map { _ in try RawConnection(s.path) }
        for k in kept { #expect(try await k.write("/cap", "v").text == "OK") }
        let extra = try RawConnection(s.path)
        #expect(await extra.isClosedByPeer())
        #expect(await s.server.connectionCount() == 5)
        // A slot frees when one closes.
        _ = consume kept
        _ = await eventually { await s.server.connectionCount() == 0 }
        let c = try s.client()
        try await c.write("/cap/again", "ok")
        #expect(try await c.read("/cap/again") == "ok")
        await s.stop()
    }
}

func quietLogger() -> Logger {
    var l = Logger(label: "test-xenstored")
    l.logLevel = .critical
    return l
}

/// A flag the test and the server's loop thread share.
final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set(_ v: Bool) { lock.withLock { value = v } }
    func get() -> Bool { lock.withLock { value } }
}

/// Instants the server's loop thread records and the test reads.
final class LockedTimes: @unchecked Sendable {
    private let lock = NSLock()
    private var times: [UInt64] = []
    func append(_ t: UInt64) { lock.withLock { times.append(t) } }
    var count: Int { lock.withLock { times.count } }
    var values: [UInt64] { lock.withLock { times } }
}

/// Floods a client can cause turn into one log line per interval.
@Suite struct LogThrottleTests {
    @Test func oneLinePerKindPerIntervalWithTheCountHeldBack() {
        var t = LogThrottle()
        t.interval = 3600
        #expect(t.admit("accept-fd") == (true, 0))
        for _ in 0..<10_000 { #expect(t.admit("accept-fd").log == false) }
        // Another kind is not held back by the first.
        #expect(t.admit("refused-untrusted").log)
        var now = LogThrottle()
        now.interval = 0
        #expect(now.admit("k").log)
        #expect(now.admit("k") == (true, 0))
    }
}
