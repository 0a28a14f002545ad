import BlockViewTestSupport
import Foundation
import NBDProtocol
import TestSupport
import Testing
import XenBlockExport

/// A guest's vbd (blkfront on an embedded host, blkback on libaio over an image file)
/// served as an NBD export on a Unix socket, used by libnbd's and QEMU's own clients.
@Suite(.serialized, .timeLimit(.minutes(10)), .enabled(if: nbdToolsInstalled, "needs libnbd-bin and qemu-utils"))
struct RealClientTests {
    /// A served disk: the vbd, the server and its socket.
    private func serve(bytes: Int, readOnly: Bool = false) async throws -> (PVDisk, BlockExportServer, String) {
        let disk = try await PVDisk.make(bytes: bytes, readOnly: readOnly)
        let server = try BlockExportServer(device: disk.frontend, name: "xvda")
        let socket = disk.directory.path("nbd.sock")
        try server.listen(on: .unix(socket))
        return (disk, server, socket)
    }

    private func finish(_ disk: PVDisk, _ server: BlockExportServer) async throws {
        server.shutdown()
        #expect(await server.stopped(timeout: .seconds(120)))
        let leftovers = try await disk.close()
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func nbdinfoReportsTheSizeAndFlags() async throws {
        let (disk, server, socket) = try await serve(bytes: 64 << 20)
        let run = try await runTool("nbdinfo", ["--json", "nbd+unix:///xvda?socket=\(socket)"])
        #expect(run.status == 0, "\(run)")
        let json = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any]
        let export = (json?["exports"] as? [[String: Any]])?.first
        #expect(export?["export-size"] as? Int == 64 << 20, "\(run.output)")
        #expect(export?["is_read_only"] as? Bool == false, "\(run.output)")
        #expect(export?["can_flush"] as? Bool == true, "\(run.output)")
        #expect(export?["can_fua"] as? Bool == true, "\(run.output)")
        #expect(export?["can_zero"] as? Bool == true, "\(run.output)")
        #expect(export?["can_multi_conn"] as? Bool == true, "\(run.output)")
        #expect(export?["block_size_minimum"] as? Int == 512, "\(run.output)")
        #expect(export?["block_size_preferred"] as? Int == 4096, "\(run.output)")
        #expect(export?["block_size_maximum"] as? Int == 32 << 20, "\(run.output)")
        try await finish(disk, server)
    }

    @Test func aReadOnlyVbdIsAReadOnlyExport() async throws {
        let (disk, server, socket) = try await serve(bytes: 16 << 20, readOnly: true)
        let run = try await runTool("nbdinfo", ["--json", "nbd+unix:///?socket=\(socket)"])
        #expect(run.status == 0, "\(run)")
        let json = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any]
        let export = (json?["exports"] as? [[String: Any]])?.first
        #expect(export?["is_read_only"] as? Bool == true, "\(run.output)")
        #expect(export?["can_trim"] as? Bool == false, "\(run.output)")
        #expect(export?["can_zero"] as? Bool == false, "\(run.output)")
        // And a write through QEMU is refused (EPERM), not performed.
        let write = try await runTool("qemu-io", ["-f", "raw", "-c", "write -P 0xab 0 64k", "nbd+unix:///?socket=\(socket)"])
        #expect(write.status != 0 || write.output.contains("failed") || write.output.contains("read-only"), "\(write)")
        try await finish(disk, server)
    }

    @Test func qemuIoWritesPatternsAndReadsThemBack() async throws {
        let (disk, server, socket) = try await serve(bytes: 64 << 20)
        let uri = "nbd+unix:///?socket=\(socket)"
        let run = try await runTool("qemu-io", ["-f", "raw",
                                                "-c", "write -P 0xab 0 64k", "-c", "write -P 0xcd 1M 128k",
                                                "-c", "write -z 64k 64k", "-c", "flush",
                                                "-c", "aio_write -P 0x11 4M 4k", "-c", "aio_write -P 0x22 5M 4k", "-c", "aio_flush",
                                                "-c", "read -P 0xab 0 64k", "-c", "read -P 0 64k 64k",
                                                "-c", "read -P 0xcd 1M 128k", "-c", "read -P 0x11 4M 4k", "-c", "read -P 0x22 5M 4k",
                                                uri])
        #expect(run.status == 0, "\(run)")
        #expect(!run.output.contains("Pattern verification failed"), "\(run)")
        #expect(!run.output.contains("failed"), "\(run)")
        // The bytes are in the image, where blkback put them.
        let image = try FileHandle(forReadingFrom: URL(fileURLWithPath: disk.image))
        try image.seek(toOffset: 1 << 20)
        #expect(try image.read(upToCount: 128 << 10) == Data(repeating: 0xCD, count: 128 << 10))
        try image.close()
        try await finish(disk, server)
    }

    @Test func nbdcopyMovesSixtyFourMebibytesInAndOutIntact() async throws {
        let (disk, server, socket) = try await serve(bytes: 64 << 20)
        let uri = "nbd+unix:///?socket=\(socket)"
        let source = disk.directory.path("source.bin")
        let back = disk.directory.path("back.bin")
        var rng = SplitMix(seed: 0x6e62_6463)
        var bytes = rng.bytes(64 << 20)
        // Holes too: nbdcopy turns zero runs into zero requests.
        for i in (8 << 20)..<(9 << 20) { bytes[i] = 0 }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        let copyIn = try await runTool("nbdcopy", [source, uri])
        #expect(copyIn.status == 0, "\(copyIn)")
        let copyOut = try await runTool("nbdcopy", [uri, back])
        #expect(copyOut.status == 0, "\(copyOut)")
        let want = try await sha256(source)
        #expect(want.count == 64)
        #expect(try await sha256(back) == want)
        #expect(try await sha256(disk.image) == want)
        try await finish(disk, server)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/fio"), "needs fio"))
    func fioWritesRandomlyAndVerifiesThroughLibnbd() async throws {
        let (disk, server, socket) = try await serve(bytes: 32 << 20)
        let run = try await runTool("fio", ["--name=verify", "--ioengine=nbd", "--uri=nbd+unix:///?socket=\(socket)",
                                            "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m", "--verify=crc32c",
                                            "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json"])
        #expect(run.status == 0, "\(run)")
        let text = run.output
        let json = text.firstIndex(of: "{").flatMap { try? JSONSerialization.jsonObject(with: Data(text[$0...].utf8)) } as? [String: Any]
        let job = (json?["jobs"] as? [[String: Any]])?.first
        #expect(job?["error"] as? Int == 0, "\(text)")
        #expect((job?["write"] as? [String: Any])?["io_bytes"] as? Int == 16 << 20, "\(text)")
        #expect((job?["read"] as? [String: Any])?["io_bytes"] as? Int == 16 << 20, "the verify pass read everything back: \(text)")
        try await finish(disk, server)
    }

    @Test func qemuImgConvertsToAndFromTheExport() async throws {
        let (disk, server, socket) = try await serve(bytes: 32 << 20)
        let uri = "nbd+unix:///?socket=\(socket)"
        let raw = disk.directory.path("in.raw")
        let qcow = disk.directory.path("out.qcow2")
        let back = disk.directory.path("back.raw")
        var rng = SplitMix(seed: 42)
        var bytes = [UInt8](repeating: 0, count: 32 << 20)
        for i in stride(from: 0, to: bytes.count, by: 4096) where rng.next() % 3 != 0 {
            for j in i..<(i + 4096) { bytes[j] = UInt8(truncatingIfNeeded: rng.next()) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: raw))
        let toExport = try await runTool("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", raw, uri])
        #expect(toExport.status == 0, "\(toExport)")
        let fromExport = try await runTool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", uri, qcow])
        #expect(fromExport.status == 0, "\(fromExport)")
        let compare = try await runTool("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, qcow])
        #expect(compare.status == 0, "\(compare)")
        let again = try await runTool("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow, back])
        #expect(again.status == 0, "\(again)")
        #expect(try await sha256(back) == (try await sha256(raw)))
        try await finish(disk, server)
    }
}
