import Testing

@testable import XenBlockExport

@Suite struct ExportBuffersTests {
    /// A buffer given back is the next one taken of its size class: no allocation (and no
    /// page fault on first touch) per request.
    @Test func aBufferGivenBackIsTakenAgain() {
        let buffers = ExportBuffers()
        let first = buffers.take(4096)
        let address = first.bytes.baseAddress
        buffers.give(first)
        #expect(buffers.keptCount == 1)
        let again = buffers.take(512)
        #expect(again.bytes.baseAddress == address)
        #expect(again.bytes.count == 512)
        #expect(buffers.keptCount == 0)
        // Another size class does not take it.
        buffers.give(again)
        let larger = buffers.take(4097)
        #expect(larger.bytes.baseAddress != address)
        #expect(larger.bytes.count == 4097)
        buffers.give(larger)
        #expect(buffers.keptCount == 2)
    }

    /// Every buffer is page-aligned, of the size asked for, and writable to its end.
    @Test(arguments: [0, 1, 511, 4096, 8191, 65536, 131072, 131073, 1 << 20])
    func buffersArePageAlignedAndWhole(count: Int) {
        let buffers = ExportBuffers()
        let b = buffers.take(count)
        #expect(b.bytes.count == count)
        #expect(Int(bitPattern: b.bytes.baseAddress) % 4096 == 0)
        b.bytes.initializeMemory(as: UInt8.self, repeating: 0xa5)
        buffers.give(b)
    }

    /// What is kept is bounded (1 MiB per size class); buffers above 128 KiB are freed at once.
    @Test func keptBuffersAreBounded() {
        let buffers = ExportBuffers()
        let small = (0..<300).map { _ in buffers.take(4096) }
        for b in small { buffers.give(b) }
        #expect(buffers.keptCount == 256)
        let large = (0..<20).map { _ in buffers.take(128 << 10) }
        for b in large { buffers.give(b) }
        #expect(buffers.keptCount == 256 + 8)
        buffers.give(buffers.take(1 << 20))
        #expect(buffers.keptCount == 256 + 8)
    }
}
