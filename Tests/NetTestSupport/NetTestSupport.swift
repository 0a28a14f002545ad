import Foundation
import Glibc
import TestSupport

/// A namespace made for one test and removed after it.
public final class TestNamespace {
    public let name: String
    public var path: String { "/run/netns/\(name)" }

    public init(_ prefix: String) throws {
        name = "\(prefix)\(getpid() % 100_000)"
        _ = try? Shell.run("ip", "netns", "del", name)
        try Shell.run("ip", "netns", "add", name)
    }

    public func run(_ args: String...) throws { try Shell.run(["ip", "netns", "exec", name] + args) }

    deinit { _ = try? Shell.run("ip", "netns", "del", name) }
}

public enum Shell {
    public struct Failed: Error { public var command: String; public var status: Int32 }

    @discardableResult
    public static func run(_ args: String...) throws -> String { try run(args) }

    @discardableResult
    public static func run(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Failed(command: args.joined(separator: " "), status: p.terminationStatus) }
        return String(decoding: data, as: UTF8.self)
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
