import Foundation
import Glibc
import TestSupport

/// A namespace made for one test and removed after it.
public final class TestNamespace {
    public let name: String
    public var path: String { "/run/netns/\(name)" }

    public init(_ prefix: String) async throws {
        name = "\(prefix)\(getpid() % 100_000)"
        _ = try? await Shell.run("ip", "netns", "del", name)
        try await Shell.run("ip", "netns", "add", name)
    }

    public func run(_ args: String...) async throws { try await Shell.run(["ip", "netns", "exec", name] + args) }

    /// Starts `ip netns del` and does not wait for it (a `deinit` cannot await, and must
    /// not block a pool thread); `Process` reaps it. The kernel takes a namespace's
    /// devices down after the deletion in its own time anyway.
    deinit { _ = try? spawn(["ip", "netns", "del", name]) }
}

public enum Shell {
    public struct Failed: Error { public var command: String; public var status: Int32 }

    @discardableResult
    public static func run(_ args: String...) async throws -> String { try await run(args) }

    /// Runs a command and awaits it, never blocking a pool thread: its output (stdout and
    /// stderr) is read on a thread of its own while it runs, and its end is awaited with
    /// `exitStatus(of:within:)` (killed past `minimumDeadline`: status -1).
    @discardableResult
    public static func run(_ args: [String]) async throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        async let data = onThread { out.fileHandleForReading.readDataToEndOfFile() }
        let status = await exitStatus(of: p) ?? -1
        let output = await data
        guard status == 0 else { throw Failed(command: args.joined(separator: " "), status: status) }
        return String(decoding: output, as: UTF8.self)
    }
}

/// Runs a command in the background; stop it with `terminate()`.
public func spawn(_ args: [String], output: Pipe? = nil) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    if let output { p.standardOutput = output } else { p.standardOutput = FileHandle.nullDevice }
    p.standardError = FileHandle.nullDevice
    try p.run()
    return p
}

/// Runs a command (`spawn`) and awaits it, never blocking a pool thread: killed past
/// `seconds` (see `exitStatus(of:within:)`), when its status is -1; its status and output.
public func runCommand(_ args: [String], seconds: Double = minimumDeadline) async -> (status: Int32, output: String) {
    let out = Pipe()
    guard let p = try? spawn(args, output: out) else { return (-1, "") }
    // The output is small (a tool's message), so the pipe never fills before the exit.
    let status = await exitStatus(of: p, within: seconds) ?? -1
    let data = await onThread { out.fileHandleForReading.availableData }
    return (status, String(decoding: data, as: UTF8.self))
}

/// True where network namespaces, bridges and TAPs can be made (root and /dev/net/tun).
public var canMakeNetworks: Bool { getuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0 }
