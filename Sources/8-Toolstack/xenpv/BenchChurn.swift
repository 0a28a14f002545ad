import ArgumentParser
import Foundation
import Glibc
import XenABI
import XenSimulatorClient
import XenStore

/// `xenpv bench churn`: a `xenpv hypervisor` child under a join/leave,
/// bind/unbind, map/unmap and store-transaction churn, with its RSS,
/// descriptors and threads sampled as it goes: they must stay flat (issue 13).
struct BenchChurn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "churn",
        abstract: "Guests joining and leaving a hypervisor daemon for a while; its RSS, fds and threads over time.")

    @Option(help: "Seconds to churn.")
    var seconds: Double = 60

    @Option(help: "Seconds between samples.")
    var every: Double = 10

    func validate() throws {
        guard seconds > 0, every > 0 else { throw ValidationError("--seconds and --every must be positive") }
    }

    struct Sample {
        var cycles: Int
        var rssKiB: Int
        var fds: Int
        var threads: Int
    }

    static func sample(_ pid: Int32, cycles: Int) -> Sample {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return -1 }
            return Int(line.split(whereSeparator: \.isWhitespace).dropFirst().first ?? "") ?? -1
        }
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
        return Sample(cycles: cycles, rssKiB: field("VmRSS"), fds: fds, threads: field("Threads"))
    }

    func run() async throws {
        let dir = NSTemporaryDirectory() + "xenpv-churn-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/hv.sock"
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        daemon.arguments = ["hypervisor", "--socket", socket]
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        defer { daemon.terminate() }
        let started = Date()
        while !FileManager.default.fileExists(atPath: socket + ".xenstore") {
            guard Date().timeIntervalSince(started) < 10 else { throw CommandError("the hypervisor daemon did not start") }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let dom0 = try RemoteHypervisor(socketPath: socket, as: .dom0)
        defer { dom0.close() }
        let dom0Events = try dom0.openEventChannels()
        let dom0Mapper = try dom0.openGrantMapper()

        print("  seconds   cycles   daemon RSS KiB   fds   threads")
        var samples: [Sample] = []
        var cycles = 0
        let deadline = Date().addingTimeInterval(seconds)
        var nextSample = Date()
        while Date() < deadline {
            // One guest's life: join with a vbd and a vif, a channel bound and
            // unbound from both ends, a page granted, mapped and unmapped, a
            // transaction that writes and removes unique names, then leave.
            let guest = try RemoteHypervisor(socketPath: socket, as: .newGuest(frames: 64, devices: [.vbd, .vif]))
            let events = try guest.openEventChannels()
            let port = try events.bindUnbound(remote: .dom0)
            let far = try dom0Events.bindInterdomain(remote: guest.domainID, remotePort: port)
            try dom0Events.unbind(far)
            try events.unbind(port)
            let shared = try guest.openGrantSharer().sharePages(count: 1, with: .dom0, writable: true)
            let mapping = try dom0Mapper.map(shared.refs[0], from: guest.domainID, writable: true)
            try dom0Mapper.unmap(mapping)
            let n = cycles
            try await guest.store.transaction { tx in
                for i in 0..<8 { try await tx.write("data/churn-\(n)-\(i)", "x") }
                for i in 0..<8 { try await tx.rm("data/churn-\(n)-\(i)") }
            }
            events.close()
            guest.close()
            cycles += 1
            if Date() >= nextSample {
                let s = Self.sample(daemon.processIdentifier, cycles: cycles)
                samples.append(s)
                let t = Date().timeIntervalSince(deadline.addingTimeInterval(-seconds))
                print(String(format: "%9.0f %8d %16d %5d %9d", t, s.cycles, s.rssKiB, s.fds, s.threads))
                nextSample = nextSample.addingTimeInterval(every)
            }
        }
        // The daemon tears the last guests down after they leave; let it.
        try await Task.sleep(nanoseconds: 500_000_000)
        let last = Self.sample(daemon.processIdentifier, cycles: cycles)
        samples.append(last)
        print(String(format: "%9.0f %8d %16d %5d %9d   (settled)", seconds, last.cycles, last.rssKiB, last.fds, last.threads))
        // The first sample is taken before allocators and caches warm up; compare from the second.
        let base = samples.count > 2 ? samples[1] : samples[0]
        print("from the second sample to the end: RSS \(last.rssKiB - base.rssKiB) KiB, fds \(last.fds - base.fds), "
              + "threads \(last.threads - base.threads), over \(last.cycles - base.cycles) guest lives")
    }
}
