import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

@Suite(.timeLimit(.minutes(5)))
struct FaultInjectionTests {
    /// Eight writes, the fifth fails: only it, and nothing of it reaches the disk.
    func onlyTheChosenOperationFails(_ inner: any StorageEngine) throws -> [UInt8] {
        let f = FaultInjectingStorage(inner, faults: [.nth(5)])
        let b = Buffers(byteCount: 8 * 4096, iovecCount: 8)
        for i in 0..<8 { b.bytes[i * 4096..<(i + 1) * 4096].initializeMemory(as: UInt8.self, repeating: UInt8(i + 1)) }
        let ops = (0..<8).map { i in
            StorageOperation.write(tag: UInt64(i + 1), offset: UInt64(i * 4096), buffers: b.vector(first: i, at: i * 4096, pieces: [4096]))
        }
        var d = Driver(f)
        let r = try d.run(ops)
        for t: UInt64 in 1...8 {
            if t == 5 {
                #expect(r[t]?.error?.code == .io(.ioError))
            } else {
                #expect(r[t]?.succeeded == true, "tag \(t)")
            }
        }
        #expect(f.injectedCount == 1 && f.submittedCount == 8)
        let check = Buffers(byteCount: 8 * 4096, iovecCount: 1)
        var d2 = Driver(inner)
        _ = try d2.run([.read(tag: 1, offset: 0, buffers: check.vector(first: 0, at: 0, pieces: [8 * 4096]))])
        return Array(check.bytes)
    }

    @Test func nthOnMemory() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let bytes = try onlyTheChosenOperationFails(try MemoryStorage(byteCount: 64 * 1024))
            for i in 0..<8 { #expect(bytes[i * 4096] == (i == 4 ? 0 : UInt8(i + 1))) }
        }
    }

    @Test(arguments: FileEngine.allCases) func nthOnAFileEngine(_ engine: FileEngine) async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let image = try TemporaryImage(bytes: 64 * 1024)
            let s = try engine.open(image.filePath, queueDepth: 16)
            defer { s.close() }
            let bytes = try onlyTheChosenOperationFails(s)
            for i in 0..<8 { #expect(bytes[i * 4096] == (i == 4 ? 0 : UInt8(i + 1))) }
        }
    }

    @Test func byOffsetAndKind() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let m = try MemoryStorage(byteCount: 64 * 1024)
            let f = FaultInjectingStorage(m, faults: [.overlapping(8192..<8193), .kind(.flush)])
            let b = Buffers(byteCount: 16 * 1024)
            var d = Driver(f)
            let r = try d.run([
                .read(tag: 1, offset: 4096, buffers: b.vector(first: 0, at: 0, pieces: [4096])),    // ends at 8192: spared
                .read(tag: 2, offset: 4096, buffers: b.vector(first: 1, at: 0, pieces: [4097])),    // touches 8192
                .discard(tag: 3, offset: 8000, length: 500),
                .flush(tag: 4),
                .read(tag: 5, offset: 8193, buffers: b.vector(first: 2, at: 0, pieces: [100])),
            ])
            #expect(r[1]?.succeeded == true && r[5]?.succeeded == true)
            #expect(r[2]?.error != nil && r[3]?.error != nil && r[4]?.error != nil)
        }
    }
}
