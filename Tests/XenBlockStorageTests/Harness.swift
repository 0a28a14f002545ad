import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
@testable import XenBlockStorage

/// Page-aligned scratch memory with the iovec arrays pointing into it.
final class Buffers {
    let bytes: UnsafeMutableRawBufferPointer
    let iovecs: UnsafeMutableBufferPointer<iovec>

    init(byteCount: Int, iovecCount: Int = 64) {
        bytes = .allocate(byteCount: byteCount, alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        iovecs = .allocate(capacity: iovecCount)
        iovecs.initialize(repeating: iovec())
    }

    deinit {
        bytes.deallocate()
        iovecs.deallocate()
    }

    /// iovecs[first..<first+pieces.count] over consecutive pieces of `bytes` from `at`.
    func vector(first: Int, at: Int, pieces: [Int]) -> UnsafeMutableBufferPointer<iovec> {
        var position = at
        for (i, length) in pieces.enumerated() {
            iovecs[first + i] = iovec(iov_base: bytes.baseAddress! + position, iov_len: length)
            position += length
        }
        return UnsafeMutableBufferPointer(rebasing: iovecs[first..<first + pieces.count])
    }
}

/// Drives an engine the way a queue thread does, with every wait bounded.
struct Driver {
    let engine: any StorageEngine
    var completions = [StorageCompletion](repeating: .empty, count: 128)

    init(_ engine: any StorageEngine) { self.engine = engine }

    /// Submits everything (reaping when the queue is full) and returns every completion by
    /// tag. Gives up (an issue recorded) only after `minimumDeadline`: the bound keeps a broken
    /// engine from hanging the test, it is not how fast a correct one must be.
    mutating func run(_ ops: [StorageOperation]) throws -> [UInt64: StorageCompletion] {
        var results: [UInt64: StorageCompletion] = [:]
        var next = 0
        let clock = ContinuousClock()
        let deadline = Duration.seconds(minimumDeadline)
        let end = clock.now + deadline
        while results.count < ops.count {
            if next < ops.count {
                next += try ops[next...].withUnsafeBufferPointer { try engine.submit($0) }
            }
            guard clock.now < end else {
                Issue.record("engine did not finish \(ops.count) operations in \(deadline): \(results.count) done")
                return results
            }
            // Sleep in poll on the completion descriptor, as the queue thread will.
            if Driver.waitReadable(engine.completionDescriptor, milliseconds: 1000) == false { continue }
            let n = try completions.withUnsafeMutableBufferPointer { try engine.reap(into: $0, timeout: .zero) }
            for c in completions.prefix(n) {
                #expect(results[c.tag] == nil, "tag \(c.tag) completed twice")
                results[c.tag] = c
            }
        }
        #expect(engine.outstanding == 0)
        return results
    }

    static func waitReadable(_ fd: FileDescriptor, milliseconds: Int32) -> Bool {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, milliseconds) > 0
    }
}

/// What the storage tests ask of an image besides its path.
extension TemporaryImage {
    var filePath: FilePath { FilePath(path) }

    /// 512-byte blocks the file system has allocated (st_blocks).
    func allocatedBlocks() -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_blocks) : -1
    }
}
