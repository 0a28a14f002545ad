import Foundation
import Glibc
import TestSupport
import Testing
import XenABI
import XenSimulatorDaemon
import XenSimulatorClient

extension ProcessTests {
    /// `xenpv hypervisor`, `xenpv backend` and `xenpv guest` as separate processes,
    /// driven as a person would from three terminals.
    @Suite(.serialized)
    struct ThreeProcessTests {
        @Test(.timeLimit(.minutes(5)))
        func backendRestartGuestCrashAndDaemonLoss() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            var backend = try Child(["backend", "--connect", sock], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")

            // A guest streams frames through the echoing backend; the backend is
            // killed mid-stream and a new one started; the guest's frontend waits,
            // reconnects, and every frame it counted as echoed came back intact.
            let guest = try Child(["guest", "net-echo", "--connect", sock, "--count", "120", "--interval-ms", "5", "--timeout", "30"],
                                  name: "guest")
            defer { guest.sendKill() }
            #expect(await guest.waitFor("echoed 30/"), "\(guest.output)")
            await backend.kill()
            let echoedBefore = guest.output.components(separatedBy: "echoed ").count - 1
            backend = try Child(["backend", "--connect", sock, "--verbose"], name: "backend 2")
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            #expect(await guest.waitForExit(seconds: 40) == 0, "\(guest.output)\n--- backend 2:\n\(backend.output)\n--- hypervisor:\n\(hv.output)")
            #expect(guest.output.contains("120 frames echoed intact"), "\(guest.output)")
            #expect(echoedBefore < 120, "the backend was killed mid-stream")
            print("guest across the backend restart:", guest.output.split(separator: "\n").filter { !$0.hasPrefix("echoed") })

            // A guest killed mid-stream: the daemon destroys its domain and removes
            // its vif; the backend unmaps, unbinds and ends the vif's thread.
            // The join and each report are round trips to the daemon (another process),
            // blocking: on a thread of their own, never the cooperative pool.
            let dom0 = try await onThread { try RemoteHypervisor(socketPath: sock, as: .dom0, onDaemonLost: ignoreLoss) }
            defer { dom0.close() }
            let report = { await onThread { try? dom0.report() } }
            #expect(await backend.waitFor("vifs: none"), "\(backend.output)")
            let idleThreads = threadCount(of: backend.pid)
            let doomed = try Child(["guest", "net-echo", "--connect", sock, "--count", "100000", "--interval-ms", "2", "--timeout", "50"],
                                   name: "doomed guest")
            #expect(await doomed.waitFor("echoed 20/"), "\(doomed.output)")
            #expect(backend.output.contains("Connected"), "\(backend.output)")
            let busyThreads = threadCount(of: backend.pid)
            #expect(try await onThread { try dom0.report() }.mappings > 0)
            await doomed.kill()
            let released = await eventually(15) {
                guard let r = await report() else { return false }
                return r.domains == [.dom0] && r.mappings == 0 && r.ports == 0
            }
            let held = released ? "" : await report()?.description ?? "no report"
            #expect(released, "\(held)")
            // The backend no longer maps anything of the dead guest: not its memory
            // (ring views, grant-copy view), not its grant table, not the channel page.
            let doomedID = doomed.output.split(separator: "joined as ").last?.prefix { $0 != "\n" } ?? "?"
            #expect(await eventually(10) {
                let maps = procFile("/proc/\(backend.pid)/maps") ?? "?"
                return !maps.contains("-\(doomedID) ") && !maps.contains("-\(doomedID)-gnttab") && !maps.contains("xenpv-evtchn")
            }, "backend still maps \(doomedID)")
            // The vif is gone and its thread with it. (The backend's list is polled every
            // 100 ms, so a vif that lived less may never have been listed: only the last
            // listing counts, not what verbose lines follow it.)
            #expect(await eventually(10) {
                backend.output.split(separator: "\n").last { $0.hasPrefix("xenpv backend: vifs: ") } == "xenpv backend: vifs: none"
            }, "\(backend.output)")
            #expect(await eventually(10) { threadCount(of: backend.pid) < busyThreads }, "idle \(idleThreads), busy \(busyThreads)")

            // The daemon dies: every joined process exits with a clear message.
            let waiting = try Child(["guest", "net-echo", "--connect", sock, "--count", "100000", "--interval-ms", "2", "--timeout", "50"],
                                    name: "last guest")
            defer { waiting.sendKill() }
            #expect(await waiting.waitFor("echoed 5/"), "\(waiting.output)")
            await hv.kill()
            #expect(await backend.waitForExit(seconds: 10) == 3, "\(backend.output)")
            #expect(await waiting.waitForExit(seconds: 10) == 3, "\(waiting.output)")
            #expect(backend.output.contains("the hypervisor daemon at \(sock) went away"))
            #expect(waiting.output.contains("went away"))
            for child in [hv, backend, guest, doomed, waiting] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }

        /// `--disk` relative to the backend's directory, as a shell user writes it: the vbd
        /// is served from it (its path made absolute before `DiskTarget` checks it).
        @Test func aRelativeDiskPathIsServed() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            #expect(FileManager.default.createFile(atPath: dir + "/disk.img", contents: Data(count: 1 << 20)))
            let sock = dir + "/hv.sock"
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            let backend = try Child(["backend", "--connect", sock, "--disk", "disk.img"], name: "backend", directory: dir)
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")
            let guest = try Child(["guest", "disk", "write", "--connect", sock, "--length", "65536"], name: "guest")
            #expect(await guest.waitForExit(seconds: 30) == 0, "\(guest.output)\n--- backend:\n\(backend.output)")
            #expect(backend.output.contains("serves \(dir)/disk.img"), "\(backend.output)")
        }

        @Test func clearErrorsForAMissingSocketAFileAndASize() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let noSocket = try Child(["guest", "net-echo", "--connect", dir + "/none.sock"], name: "guest")
            #expect(await noSocket.waitForExit(seconds: 10) != 0)
            #expect(noSocket.output.contains("no hypervisor socket at \(dir)/none.sock"), "\(noSocket.output)")
            let noDisk = try Child(["backend", "--connect", dir + "/none.sock", "--disk", dir + "/none.img"], name: "backend")
            #expect(await noDisk.waitForExit(seconds: 10) != 0)
            #expect(noDisk.output.contains("no disk image at \(dir)/none.img"), "\(noDisk.output)")
            #expect(FileManager.default.createFile(atPath: dir + "/odd.img", contents: Data(count: 1000)))
            let oddDisk = try Child(["backend", "--connect", dir + "/none.sock", "--disk", dir + "/odd.img"], name: "backend")
            #expect(await oddDisk.waitForExit(seconds: 10) != 0)
            #expect(oddDisk.output.contains("has a bad size: 1000 bytes"), "\(oddDisk.output)")
            // An NBD export's URI is a disk too: a good one passes (and only the join fails), a bad one is named.
            let nbdDisk = try Child(["backend", "--connect", dir + "/none.sock", "--disk", "nbd+unix:///?socket=" + dir + "/nbd.sock"],
                                    name: "backend")
            #expect(await nbdDisk.waitForExit(seconds: 10) != 0)
            #expect(nbdDisk.output.contains("cannot join the hypervisor"), "\(nbdDisk.output)")
            let badURI = try Child(["backend", "--connect", dir + "/none.sock", "--disk", "nbd://"], name: "backend")
            #expect(await badURI.waitForExit(seconds: 10) != 0)
            #expect(badURI.output.contains("--disk nbd://: NBD URI \"nbd://\": no host"), "\(badURI.output)")
            let badRange = try Child(["guest", "disk", "write", "--connect", dir, "--length", "1000"], name: "guest")
            #expect(await badRange.waitForExit(seconds: 10) != 0)
            #expect(badRange.output.contains("--length must be a positive multiple of 512"), "\(badRange.output)")
            let badSize = try Child(["guest", "net-echo", "--connect", dir, "--size", "20"], name: "guest")
            #expect(await badSize.waitForExit(seconds: 10) != 0)
            #expect(badSize.output.contains("--size must be 60 to 9000 bytes"), "\(badSize.output)")
            let stale = dir + "/stale.sock"
            #expect(FileManager.default.createFile(atPath: stale, contents: nil))
            let refused = try Child(["backend", "--connect", stale], name: "backend")
            #expect(await refused.waitForExit(seconds: 10) != 0)
            #expect(refused.output.contains("cannot join the hypervisor at \(stale)"), "\(refused.output)")
        }

        @Test func ringBenchmarkAcrossProcessesRuns() async throws {
            let bench = try Child(["bench", "ring-processes", "--mode", "event", "--requests", "20000", "--rounds", "1", "--json",
                                   "--front-cpu=-1", "--back-cpu=-1"], name: "bench")
            #expect(await bench.waitForExit(seconds: 30) == 0, "\(bench.output)")
            #expect(bench.output.contains("\"across_processes_requests_per_second\""), "\(bench.output)")
        }

        /// `xenpv bench block` on an image through each engine; a bad engine name is refused.
        @Test func blockBenchmarkRunsOnEachEngine() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let image = dir + "/disk.img"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 4 << 20) == 0)
            for engine in ["io_uring", "libaio"] {
                let bench = try Child(["bench", "block", "--image", image, "--engine", engine, "--rw", "randwrite",
                                       "--queue-depth", "4", "--seconds", "0.3", "--json"], name: "bench \(engine)")
                #expect(await bench.waitForExit(seconds: 60) == 0, "\(bench.output)")
                #expect(bench.output.contains("\"engine\":\"\(engine)\""), "\(bench.output)")
                #expect(bench.output.contains("\"cpu_us_per_op\":"), "\(bench.output)")
            }
            let bad = try Child(["bench", "block", "--image", image, "--engine", "spdk"], name: "bench")
            #expect(await bad.waitForExit(seconds: 10) != 0)
            #expect(bad.output.contains("spdk"), "\(bad.output)")
        }

        /// The block path: a guest streams writes, the backend is killed mid-stream and a
        /// new one started; the guest's frontend waits, reconnects, finishes; a later guest
        /// verifies every byte, and the image on disk holds them.
        @Test(.timeLimit(.minutes(5)))
        func diskWritesSurviveABackendRestart() async throws {
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sock = dir + "/hv.sock"
            let image = dir + "/disk.img"
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 16 << 20) == 0)
            let hv = try await Child.hypervisor(socket: sock)
            defer { hv.sendKill() }
            // io_uring by default; the restarted backend serves the same image through libaio
            // and the page cache (what both kinds of backend acknowledged is kept alike).
            var backend = try Child(["backend", "--connect", sock, "--disk", image], name: "backend")
            defer { backend.sendKill() }
            #expect(await backend.waitFor("serving"), "\(backend.output)")

            let length = 4 << 20
            let writer = try Child(["guest", "disk", "write", "--connect", sock, "--length", "\(length)", "--chunk", "65536",
                                    "--interval-ms", "10", "--seed", "7"], name: "writer")
            defer { writer.sendKill() }
            #expect(await writer.waitFor("written \(1 << 20)/"), "\(writer.output)")
            #expect(await backend.waitFor("serves \(image) through io_uring"), "\(backend.output)")
            await backend.kill()
            let acknowledged = writer.output.components(separatedBy: "written ").count - 1
            #expect(acknowledged < length / 65536, "the backend was killed mid-stream")
            backend = try Child(["backend", "--connect", sock, "--disk", image, "--engine", "libaio", "--cache", "writeback"],
                                name: "backend 2")
            #expect(await writer.waitForExit(seconds: 40) == 0, "\(writer.output)")
            #expect(writer.output.contains("wrote and flushed \(length) bytes"), "\(writer.output)")
            #expect(await backend.waitFor("serves \(image) through libaio, cache=writeback"), "\(backend.output)")

            let verifier = try Child(["guest", "disk", "verify", "--connect", sock, "--length", "\(length)", "--seed", "7"],
                                     name: "verifier")
            defer { verifier.sendKill() }
            #expect(await verifier.waitForExit(seconds: 30) == 0, "\(verifier.output)")
            #expect(verifier.output.contains("verified \(length) bytes"), "\(verifier.output)")
            // Independently of the guest: the image itself holds the pattern.
            let bytes = try #require(FileManager.default.contents(atPath: image))
            let bad = (0..<length).first { i in
                let o = UInt64(i)
                return bytes[i] != UInt8(truncatingIfNeeded: (o &* 0x9E37_79B1) >> 11) ^ UInt8(truncatingIfNeeded: o >> 9) ^ 7
            }
            #expect(bad == nil, "image differs at byte \(bad ?? -1)")
            for child in [hv, backend, writer, verifier] { #expect(child.sanitizerClean, "\(child.name): \(child.output)") }
        }
    }
}
