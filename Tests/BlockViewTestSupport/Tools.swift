import Foundation
import TestSupport

/// What a finished program printed and how it ended.
public struct ToolRun: CustomStringConvertible, Sendable {
    public let status: Int32
    public let output: String
    public var description: String { "exit \(status): \(output)" }
}

/// Where a tool is: `/usr/bin`, `/usr/sbin`, `/bin` or `/sbin`.
public func toolPath(_ tool: String) -> String? {
    ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"].map { $0 + tool }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// Runs a program (`nbdinfo`, `qemu-io`, `mkfs.ext4`, …) and waits for it by looking every
/// 20 ms (never blocking a pool thread); killed if it runs past `seconds`. It is started
/// from a thread of its own: between fork and exec the child closes the descriptors it
/// inherited, and closing one of a FUSE file this process serves waits for this process's
/// answer (a flush), which a device may compute on the pool; a pool thread blocked in
/// `Process.run` could starve it.
public func runTool(_ tool: String, _ arguments: [String], seconds: Double = 180) async throws -> ToolRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: toolPath(tool) ?? "/usr/bin/" + tool)
    process.arguments = arguments
    let log = FileManager.default.temporaryDirectory.appendingPathComponent("xenpv-tool-\(UUID().uuidString).log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: log) }
    let handle = try FileHandle(forWritingTo: log)
    process.standardOutput = handle
    process.standardError = handle
    process.standardInput = FileHandle.nullDevice
    try await onThread { try process.run() }
    try? handle.close()
    let status = await exitStatus(of: process, within: seconds)
    let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
    guard let status else { throw TimedOut(seconds: seconds) }
    return ToolRun(status: status, output: output)
}

/// A shell script's run (`sh -c`).
public func shell(_ script: String, seconds: Double = 180) async throws -> ToolRun {
    try await runTool("sh", ["-c", script], seconds: seconds)
}

/// The SHA-256 of a file, by `sha256sum` (run like the other tools).
public func sha256(_ path: String) async throws -> String {
    let run = try await runTool("sha256sum", [path])
    return String(run.output.prefix(64))
}
