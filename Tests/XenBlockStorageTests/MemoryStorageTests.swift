import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

@Suite(.timeLimit(.minutes(5)))
struct MemoryStorageTests {
    @Test func randomReadsAndWritesMatchAShadowCopy() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let m = try MemoryStorage(byteCount: 4 << 20, queueDepth: 16)
            try Conformance.randomIO(m, seed: 1)
        }
    }

    @Test func sameSemanticsWithODirectAlignment() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let m = try MemoryStorage(byteCount: 2 << 20, alignment: 512, queueDepth: 32)
            try Conformance.randomIO(m, seed: 2, rounds: 3)
            try Conformance.refusals(m)
        }
    }

    @Test func refusalsFailAlone() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            try Conformance.refusals(try MemoryStorage(byteCount: 1 << 20))
        }
    }

    @Test func backPressureAndIdleReap() async throws {
        // Its reaps wait (an idle one for all its timeout): on a thread of their own.
        try await onThread {
            let m = try MemoryStorage(byteCount: 1 << 20, queueDepth: 8)
            try Conformance.backPressure(m)
            try Conformance.boundedIdleReap(m)
        }
    }

    @Test func readOnlyRefusesWritesAndDiscards() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            _ = try Conformance.readOnlyRefusals(try MemoryStorage(byteCount: 1 << 20, readOnly: true))
        }
    }

    @Test func discardReadsBackZeros() async throws {
        // Driver.run polls the completion descriptor: on a thread of its own.
        try await onThread {
            let m = try MemoryStorage(byteCount: 64 * 1024)
            _ = m.withContents { $0.initializeMemory(as: UInt8.self, repeating: 0x5A) }
            var d = Driver(m)
            _ = try d.run([.discard(tag: 1, offset: 1000, length: 3000)])
            m.withContents { c in
                #expect(c[999] == 0x5A && c[1000] == 0 && c[3999] == 0 && c[4000] == 0x5A)
            }
        }
    }

    @Test func closedEngineThrows() throws {
        let m = try MemoryStorage(byteCount: 4096)
        m.close()
        let ops = [StorageOperation.flush(tag: 1)]
        #expect(throws: StorageError.self) { try ops.withUnsafeBufferPointer { try m.submit($0) } }
    }
}
